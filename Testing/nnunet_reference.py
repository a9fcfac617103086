"""nnU-Net v2's own tools, run as a script (nnunetv2 reads its folders from environment variables at import time and
starts worker processes with "spawn", so it runs in a fresh process with ``nnUNet_raw``/``nnUNet_preprocessed``/
``nnUNet_results`` pointing into the test's tmp folder).

    python Testing/nnunet_reference.py make ROOT DATA_DIR     # dataset from real CTs, planned, preprocessed, checkpoints
    python Testing/nnunet_reference.py predict ROOT CT OUT    # nnUNetPredictor: label map, logits, preprocessed image

``make``: a tiny Dataset901 from TotalSegmentator's example CT (3 mm) and its 30-slice crop, their labels mapped to
spleen / liver / kidney; nnU-Net's fingerprint extractor, its ``ExperimentPlanner`` (with two of its own knobs turned
down, 8 base features, at most 64, a 0.5 GB memory target, so that the network runs on 2 CPU cores), its
``DefaultPreprocessor``; then for folds 0 and 1 nnU-Net's ``nnUNetTrainer`` initialises the network (its He
initialisation, seeds 0 and 1) and writes ``checkpoint_final.pth`` with its own ``save_checkpoint``, plus the
``plans.json``/``dataset.json`` copies a trained folder has. Untrained weights give a near-constant label map, so
the segmentation head's bias is set so that each class wins on about a quarter of the voxels of the training CT
(the map then follows the image's structure and ties are as frequent as in a real model's boundaries); this
edits ``network_weights`` only and is written back with ``torch.save`` like the trainer's. Training is not
possible here: 20 iterations took 566 s on 2 cores.

``predict``: ``nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False)`` from the results
folder, ``predict_single_npy_array`` on the CT read by nnU-Net's ``SimpleITKIO``; also the preprocessed network-grid
image (``DefaultPreprocessor.run_case``) and its logits (``predict_logits_from_preprocessed_data``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DATASET_ID, DATASET = 901, "Dataset901_PTQTiny"
LABELS = {"background": 0, "spleen": 1, "liver": 2, "kidney": 3}
#: TotalSegmentator v2 'total' values -> this dataset's labels (spleen 1, kidney_right 2, kidney_left 3, liver 5).
TOTALSEG_TO_LABEL = {1: 1, 5: 2, 2: 3, 3: 3}
CASES = (("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"), ("example_ct_sm.nii.gz", "example_seg.nii.gz"))
CONFIGURATION_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def _environment(root: Path) -> None:
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(root / name)
    os.environ.setdefault("nnUNet_def_n_proc", "1")


def write_dataset(root: Path, data: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    raw = root / "nnUNet_raw" / DATASET
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(exist_ok=True)
    for index, (image_name, label_name) in enumerate(CASES):
        image, labels = sitk.ReadImage(str(data / image_name)), sitk.ReadImage(str(data / label_name))
        source = sitk.GetArrayFromImage(labels)
        mapped = np.zeros(source.shape, np.uint8)
        for value, label in TOTALSEG_TO_LABEL.items():
            mapped[source == value] = label
        label_image = sitk.GetImageFromArray(mapped)
        label_image.CopyInformation(image)
        sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(raw / "imagesTr" / f"case{index:03d}_0000.nii.gz"))
        sitk.WriteImage(label_image, str(raw / "labelsTr" / f"case{index:03d}.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                  "numTraining": len(CASES), "file_ending": ".nii.gz"}))


def plan_and_preprocess() -> None:
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, preprocess_dataset

    extract_fingerprint_dataset(DATASET_ID, num_processes=1, verbose=False, show_progress_bar=False)
    planner = ExperimentPlanner(DATASET_ID, gpu_memory_target_in_gb=0.5)
    planner.UNet_base_num_features = 8
    planner.UNet_max_features_3d = 64
    planner.plan_experiment()
    preprocess_dataset(DATASET_ID, configurations=("3d_fullres",), num_processes=(1,), verbose=False)


def write_checkpoints(root: Path, data: Path) -> None:
    import shutil

    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    results = root / "nnUNet_results" / DATASET / CONFIGURATION_FOLDER
    for fold in (0, 1):
        torch.manual_seed(fold)
        trainer = get_trainer_from_args(str(DATASET_ID), "3d_fullres", fold, "nnUNetTrainer", "nnUNetPlans",
                                        device=torch.device("cpu"))
        trainer.initialize()
        _balance_head(trainer, data)
        (results / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(results / f"fold_{fold}" / "checkpoint_final.pth"))
    preprocessed = root / "nnUNet_preprocessed" / DATASET
    shutil.copy(preprocessed / "nnUNetPlans.json", results / "plans.json")
    shutil.copy(preprocessed / "dataset.json", results / "dataset.json")


def _balance_head(trainer, data: Path) -> None:
    """Set the final 1x1x1 convolution's bias so that each class is the argmax on about a quarter of the voxels."""
    import numpy as np
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    image, properties = SimpleITKIO().read_images([str(data / CASES[0][0])])
    preprocessed, _, _ = DefaultPreprocessor(verbose=False).run_case_npy(
        image, None, properties, trainer.plans_manager, trainer.configuration_manager, trainer.dataset_json)
    network = trainer.network.eval()
    head = network.decoder.seg_layers[-1]
    patch = [min(p, s) for p, s in zip(trainer.configuration_manager.patch_size, preprocessed.shape[1:])]
    with torch.no_grad():
        head.bias.zero_()
        logits = network(torch.from_numpy(preprocessed[None, :, :patch[0], :patch[1], :patch[2]]).float())[0]
        flat = logits.reshape(logits.shape[0], -1).numpy().astype(np.float64)
        bias = np.zeros(len(flat))
        for _ in range(200):  # a few rounds of raising the classes that win too rarely
            share = np.bincount((flat + bias[:, None]).argmax(0), minlength=len(flat)) / flat.shape[1]
            bias += 0.5 * flat.std() * (1.0 / len(flat) - share)
        head.bias.copy_(torch.from_numpy(bias).float())
    network.train()


def predict(root: Path, ct: Path, out: Path) -> None:
    import numpy as np
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    torch.set_num_threads(2)
    folds = tuple(sys.argv[5].split(",")) if len(sys.argv) > 5 else (0,)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=torch.device("cpu"),
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(root / "nnUNet_results" / DATASET / CONFIGURATION_FOLDER),
                                                   use_folds=folds)
    image, properties = SimpleITKIO().read_images([str(ct)])
    labels = predictor.predict_single_npy_array(image, properties, None, None, False)
    preprocessed, _, _ = DefaultPreprocessor(verbose=False).run_case_npy(
        image, None, dict(properties), predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json)
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(preprocessed)).float().numpy()
    np.savez_compressed(out, labels=labels.astype(np.uint8), preprocessed=preprocessed.astype(np.float32),
                        logits=logits.astype(np.float32))


def main() -> None:
    command, root = sys.argv[1], Path(sys.argv[2])
    _environment(root)
    if command == "make":
        data = Path(sys.argv[3])
        write_dataset(root, data)
        plan_and_preprocess()
        write_checkpoints(root, data)
    elif command == "predict":
        predict(root, Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
