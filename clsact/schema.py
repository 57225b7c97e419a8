"""The config schema: every section and key clsact accepts, with its type and default.

The strategy sections mirror the constructors of ``paddleslim.auto_compression`` 2.6.0
(``tests/test_config.py`` checks them against the installed paddleslim, so drift is caught);
keeping them here lets a config be validated without importing paddle.

A type is a ``|``-separated string of ``int``, ``float``, ``bool``, ``str``, ``list``,
``dict``, ``null`` or ``any``. ``REQUIRED`` marks keys without a default.
"""

from __future__ import annotations

from typing import Any

REQUIRED = object()

# Global: where the model and data are, and how the data is read. Keys named like upstream
# (model_dir, model_filename, params_filename, batch_size, data_dir, input_name, output_dir,
# device) mean what they mean upstream.
GLOBAL: dict[str, tuple[str, Any]] = {
    "model_dir": ("str", REQUIRED),
    "model_filename": ("str", "inference.pdmodel"),
    "params_filename": ("str", "inference.pdiparams"),
    "input_name": ("str|null", None),
    "data_dir": ("str", REQUIRED),
    "train_list": ("str", "train_list.txt"),
    "val_list": ("str", "val_list.txt"),
    "batch_size": ("int", 32),
    "eval_batch_size": ("int|null", None),
    "img_size": ("int", 224),
    "resize_size": ("int", 256),
    "crop_scale": ("list", [0.08, 1.0]),
    "crop_ratio": ("list", [0.75, 1.3333333333333333]),
    "random_flip": ("bool", True),
    "mean": ("list", [0.485, 0.456, 0.406]),
    "std": ("list", [0.229, 0.224, 0.225]),
    "num_workers": ("int|null", None),
    "max_bad_fraction": ("float", 0.001),
    "seed": ("int", 0),
    "device": ("str", "auto"),
    # where JPEGs are decoded: cpu (OpenCV in the loader's workers) or gpu (nvJPEG in the
    # main process, clsact.data.gpu_decode; needs Global.device gpu and a CUDA build)
    "decode": ("str", "cpu"),
    "output_dir": ("str", "./output"),
    # object storage (clsact additions): endpoint of an S3-compatible store (else
    # AWS_ENDPOINT_URL, else AWS), attempts per request before giving up, parallel object
    # fetches per loader worker, and where scratch copies (S3 models, staging) go.
    "s3_endpoint": ("str|null", None),
    "s3_max_attempts": ("int", 6),
    "io_threads": ("int", 16),
    "scratch_dir": ("str|null", None),
    # multi-process runs: how the learning rate follows the global batch (linear: the
    # configured LR is for one process's batch_size, multiplied by the world size; none:
    # used as is), and how long a rank waits for the others before failing the run.
    "lr_scaling": ("str", "linear"),
    "collective_timeout": ("float", 600.0),
    # how ranks synchronise (clsact.distributed): gradients = fleet's gradient all-reduce ops
    # in the training program (NCCL on GPU, gloo on CPU; no host copies), state = the
    # training state averaged through the host after every step; auto = gradients on GPU,
    # state on CPU
    "rank_sync": ("str", "auto"),
    # write a checkpoint to <save-dir>/_checkpoint/ at every evaluation and, between them,
    # every N steps and/or M minutes, so that a run restarted with the same --run-id
    # resumes (clsact.checkpoint)
    "checkpoint": ("bool", True),
    # what ACT's evaluations (its choice of the best model) run on: null = the validation
    # list (upstream; the published val number is then optimistic), a list file / packed
    # index under data_dir, or selection_holdout train images held out of training
    "selection_list": ("str|null", None),
    "selection_holdout": ("int", 0),
    # QAT convergence (clsact additions; docs in docs/convergence.md): the step
    # from which the student's batch-norm statistics are frozen (normalising with the
    # running mean/variance as the deployed model does; null = never, upstream), and which
    # state is published: null = average with the guard, else last; average = the mean of
    # the states ending the last 3 healthy learning-rate guard windows (needs lr_guard; the
    # last state when there is none),
    # last = after the last step, best = the best of ACT's evaluations (upstream; on the
    # selection set, optimistic when that is the validation set)
    "freeze_bn_after": ("int|null", None),
    "final_model": ("str|null", None),
    # the learning-rate guard (clsact.guard): the first 2 x lr_guard_window steps at
    # learning rate 0 measure the untrained (quantized or pruned) student's loss; then,
    # whenever a window's median loss exceeds lr_guard_threshold x that, the last good state
    # is restored and the learning rate quartered (off for GMP: clsact.strategy.gradual)
    "lr_guard": ("bool", True),
    "lr_guard_window": ("int", 10),
    "lr_guard_threshold": ("float", 1.1),
    "checkpoint_every_steps": ("int|null", None),
    "checkpoint_every_minutes": ("float|null", 15.0),
    # the deploy report (clsact.deploy): after training, rank 0 measures the baseline and the
    # compressed model through each runtime (latency per measurement at most report_budget
    # seconds; accuracy on the validation set) and publishes report.{json,md,png} with the
    # run; the other ranks wait up to report_timeout seconds for it and the upload
    "report": ("bool", True),
    "report_budget": ("float", 5.0),
    "report_timeout": ("float", 7200.0),
}

STRATEGIES: dict[str, dict[str, tuple[str, Any]]] = {
    "QuantAware": {
        "quantize_op_types": (
            "list",
            ["conv2d", "depthwise_conv2d", "conv2d_transpose", "mul", "matmul", "matmul_v2"],
        ),
        "weight_bits": ("int", 8),
        "activation_bits": ("int", 8),
        "not_quant_pattern": ("list", ["skip_quant"]),
        "use_pact": ("bool", False),
        "activation_quantize_type": ("str", "moving_average_abs_max"),
        "weight_quantize_type": ("str", "channel_wise_abs_max"),
        "dtype": ("str", "int8"),
        "window_size": ("int", 10000),
        "moving_rate": ("float", 0.9),
        "for_tensorrt": ("bool", False),
        "onnx_format": ("bool", True),
        "is_full_quantize": ("bool", False),
    },
    "Distillation": {
        "loss": ("str", "l2"),
        "node": ("list", []),
        "alpha": ("float", 1.0),
        "teacher_model_dir": ("str|null", None),
        "teacher_model_filename": ("str|null", None),
        "teacher_params_filename": ("str|null", None),
    },
    "MultiTeacherDistillation": {
        "loss": ("list", []),
        "node": ("list", []),
        "alpha": ("list", []),
        "teacher_model_dir": ("list", []),
        "teacher_model_filename": ("list", []),
        "teacher_params_filename": ("list", []),
    },
    "HyperParameterOptimization": {
        "ptq_algo": ("list", ["KL", "hist", "avg", "mse"]),
        "bias_correct": ("list", [True, False]),
        "weight_quantize_type": ("list", ["channel_wise_abs_max"]),
        "hist_percent": ("list", [0.98, 0.999]),
        "batch_num": ("list", [10, 30]),
        "max_quant_count": ("int", 20),
    },
    "QuantPost": {
        "batch_size": ("int", 32),
        "batch_nums": ("int|null", None),
        "epochs": ("int", 20),
        "lr": ("float", 0.1),
        "algo": ("str", "hist"),
        "hist_percent": ("float", 0.999),
        "regions": ("list|null", None),
        "region_weights_names": ("list|null", None),
        "recon_level": ("str|null", None),
        "is_full_quantize": ("bool", False),
        "bias_correction": ("bool", False),
        "weight_quantize_type": ("str", "channel_wise_abs_max"),
        "activation_quantize_type": ("str", "range_abs_max"),
        "simulate_activation_quant": ("bool", False),
        "skip_tensor_list": ("list|null", None),
        "onnx_format": ("bool", True),
        "quantize_op_types": ("list", ["conv2d", "depthwise_conv2d", "mul", "matmul", "matmul_v2"]),
        "weight_bits": ("int", 8),
        "activation_bits": ("int", 8),
    },
    "ChannelPrune": {
        "pruned_ratio": ("float|list", REQUIRED),
        "prune_params_name": ("list|null", None),
        "criterion": ("str", "l1_norm"),
        "prune_params_type": ("str|null", None),
    },
    "ASPPrune": {"prune_params_name": ("list|null", None)},
    "TransformerPrune": {"pruned_ratio": ("float", REQUIRED)},
    "UnstructurePrune": {
        "prune_strategy": ("str|null", None),
        "prune_mode": ("str", "ratio"),
        "threshold": ("float", 0.01),
        "ratio": ("float", 0.55),
        "gmp_config": ("dict|null", None),
        "prune_params_type": ("str|null", "conv1x1_only"),
        "local_sparsity": ("bool", False),
    },
}

# Keys clsact adds to ACT's sections: resolved before the run (clsact.pruning), never handed
# to paddleslim (whose classes take no such argument).
CLSACT_ONLY_KEYS = (("ChannelPrune", "prune_params_type"),)

TRAIN_CONFIG: dict[str, tuple[str, Any]] = {
    "epochs": ("int|null", None),
    "train_iter": ("int|null", None),
    "learning_rate": ("float|dict", 0.02),
    "optimizer_builder": ("dict|str", {"optimizer": {"type": "SGD"}}),
    "eval_iter": ("int", 1000),
    "logging_iter": ("int", 10),
    "origin_metric": ("float|null", None),
    "target_metric": ("float|null", None),
    "amp_config": ("dict|null", None),
    "recompute_config": ("dict|null", None),
    "sharding_config": ("dict|null", None),
    "sparse_model": ("bool", False),
}

# Gate (clsact's own section, read by `clsact gate` and `compress --gate`; never passed to
# ACT): which runs may replace the last blessed one. Accuracies are fractions (0.75 = 75 %);
# every threshold is optional, but a gate without any refuses to bless.
GATE: dict[str, tuple[str, Any]] = {
    # where the `latest` pointer lives (a path or s3:// prefix); `clsact gate --against` wins
    "against": ("str|null", None),
    # floor: the compressed top-1 must be at least this
    "min_top1": ("float|null", None),
    # change against the last blessed run: top-1 may drop by at most this much (absolute)
    "max_regression": ("float|null", None),
    # ... and by at most this fraction of the last blessed run's top-1 (relative)
    "max_regression_relative": ("float|null", None),
    # anchor: the compressed top-1 may be at most this far below the run's own fp32 baseline
    # (so small nightly losses cannot ratchet the accuracy down)
    "max_drop_vs_fp32": ("float|null", None),
}

# Values ACT accepts for a few string keys; anything else fails deep inside paddle.
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("QuantAware", "activation_quantize_type"): (
        "moving_average_abs_max",
        "range_abs_max",
        "abs_max",
    ),
    ("QuantAware", "weight_quantize_type"): ("channel_wise_abs_max", "abs_max"),
    ("QuantAware", "dtype"): ("int8",),
    ("Global", "device"): ("auto", "cpu", "gpu"),
    ("Global", "decode"): ("cpu", "gpu"),
    ("Global", "lr_scaling"): ("linear", "none"),
    ("Global", "rank_sync"): ("auto", "gradients", "state"),
    ("Global", "final_model"): ("average", "last", "best"),
}

# Strategies that make paddleslim pip-install packages at run time (smac for HPO), which fails
# on a cluster without internet: refused with a clear message.
REFUSED_STRATEGIES: dict[str, str] = {
    "HyperParameterOptimization": "it pip-installs 'smac' at run time; use QuantAware + "
    "Distillation (quantization-aware training) instead",
    "TransformerPrune": "ACT's transformer pruner reads the labels from the evaluation data "
    "loader, which clsact keeps to its own exact evaluation; use ChannelPrune",
}

# The PaddleClas-format data section (paddleclas mbv3_qat_dis.yaml) is translated into Global.
DATALOADER = "DataLoader"
# The pre-2.4 name of QuantAware, silently ignored by paddleslim 2.6.0 (the run would become
# distillation only); clsact renames it with a warning.
OLD_QUANT = "Quantization"


def all_sections() -> dict[str, dict[str, tuple[str, Any]]]:
    """Every section name clsact accepts in a config file, with its key schema."""
    return {"Global": GLOBAL, **STRATEGIES, "TrainConfig": TRAIN_CONFIG, "Gate": GATE}


# What each section is, and what each key of clsact's own sections means: the config
# reference (docs/config.md) is generated from these tables.
SECTION_DOCS: dict[str, str] = {
    "Global": "Where the model and data are, how the data is read, and how the run behaves.",
    "QuantAware": "Quantization-aware training (paddleslim's `QuantAware`; upstream's old "
                  "name `Quantization` is renamed with a warning).",
    "Distillation": "Distillation from the original model (or `teacher_model_dir`); needed "
                    "by every strategy that trains.",
    "MultiTeacherDistillation": "Distillation from several teachers.",
    "HyperParameterOptimization": "Refused: paddleslim pip-installs `smac` at run time.",
    "QuantPost": "Post-training quantization.",
    "ChannelPrune": "Structured channel pruning (fewer channels: faster everywhere); with "
                    "`QuantAware`, QAT follows on the pruned model (docs/strategies.md). "
                    "clsact's `prune_params_type: conv1x1_only` picks the pointwise "
                    "convolutions.",
    "ASPPrune": "2:4 semi-structured sparsity (ASP): pays only with sparse kernels.",
    "TransformerPrune": "Refused: it reads labels from ACT's evaluation loader.",
    "UnstructurePrune": "Unstructured sparsity (GMP schedule): pays only with sparse kernels.",
    "TrainConfig": "ACT's training loop, passed to paddleslim as written (it fills its own "
                   "defaults); `epochs` or `train_iter` is required.",
    "Gate": "clsact's own: which runs `clsact gate` (and `compress --gate`) may bless. "
            "Accuracies are fractions (0.75 = 75 %); a gate without any threshold refuses.",
}

KEY_DOCS: dict[str, dict[str, str]] = {
    "Global": {
        "model_dir": "the inference model to compress (path or s3://)",
        "model_filename": "its program file",
        "params_filename": "its parameters file",
        "input_name": "the model's image input (null: its only input)",
        "data_dir": "the dataset: list files and images, or packed shards (path or s3://)",
        "train_list": "training list file or packed index, relative to data_dir",
        "val_list": "validation list file or packed index, relative to data_dir",
        "batch_size": "training batch per rank",
        "eval_batch_size": "evaluation batch (null: batch_size)",
        "img_size": "crop fed to the model",
        "resize_size": "short side before the evaluation center crop",
        "crop_scale": "random resized crop: area range",
        "crop_ratio": "random resized crop: aspect range",
        "random_flip": "random horizontal flip in training",
        "mean": "RGB mean after scaling to [0, 1]",
        "std": "RGB std after scaling to [0, 1]",
        "num_workers": "decode processes per loader (null: usable CPUs, at most 8; 0 in-process)",
        "max_bad_fraction": "corrupt images tolerated (skipped, counted) before failing",
        "seed": "shuffling, augmentation and holdout seed",
        "device": "where training runs",
        "decode": "where JPEGs are decoded (gpu: nvJPEG, needs a GPU device)",
        "output_dir": "save dir when --save-dir is not given (path or s3://)",
        "s3_endpoint": "S3-compatible endpoint (--s3-endpoint wins; else AWS_ENDPOINT_URL)",
        "s3_max_attempts": "attempts per S3 request before one error line",
        "io_threads": "parallel object fetches per loader worker",
        "scratch_dir": "local folder for scratch copies (S3 models, staging)",
        "lr_scaling": "linear: learning rate x world size; none: as written",
        "collective_timeout": "seconds a rank waits for the others before exiting 3",
        "rank_sync": "gradients (all-reduce in the program), state (averaged), auto",
        "checkpoint": "checkpoint to <save-dir>/_checkpoint/ for --run-id resume",
        "selection_list": "what ACT's evaluations select on (null: the validation list)",
        "selection_holdout": "train images held out for that selection (0: none)",
        "freeze_bn_after": "step from which batch-norm statistics are frozen (null: never)",
        "final_model": "the published state (null: average with the guard, else last)",
        "lr_guard": "the learning-rate guard (docs/convergence.md)",
        "lr_guard_window": "steps per guard window (2 windows calibrate at rate 0)",
        "lr_guard_threshold": "a window fails above this x the untrained student's loss",
        "checkpoint_every_steps": "also checkpoint every N steps (null: no step cadence)",
        "checkpoint_every_minutes": "also checkpoint every M minutes (null: no time cadence)",
        "report": "publish the deploy report (report.{json,md,png}) with the run",
        "report_budget": "seconds per latency measurement in the report",
        "report_timeout": "seconds the other ranks wait for rank 0's report and upload",
    },
    "ChannelPrune": {
        "pruned_ratio": "fraction of each weight's output channels removed (or one per name)",
        "prune_params_name": "the convolution weights to prune (checked against the model)",
        "criterion": "which channels go: l1_norm, bn_scale or geometry_median",
        "prune_params_type": "clsact: conv1x1_only prunes every pointwise convolution "
                             "(null: every ungrouped one, unless names are given)",
    },
    "ASPPrune": {
        "prune_params_name": "the weights made 2:4 sparse (null: every ungrouped convolution "
                             "and matmul whose input size is a multiple of 4)",
    },
    "UnstructurePrune": {
        "prune_strategy": "gmp: gradual magnitude pruning; null: prune once",
        "prune_mode": "ratio (a fraction of zeros) or threshold (below a magnitude)",
        "threshold": "the magnitude below which weights become zero (prune_mode: threshold)",
        "ratio": "the fraction of zeros reached",
        "gmp_config": "GMP's schedule in steps (null: derived from the run's length)",
        "prune_params_type": "conv1x1_only: the 1x1 convolutions; null: every weight but "
                             "norms and biases",
        "local_sparsity": "every weight at the ratio (else the ratio over all of them)",
    },
    "Gate": {
        "against": "where the latest pointer lives (clsact gate --against wins)",
        "min_top1": "floor on the compressed top-1",
        "max_regression": "largest top-1 drop against the last blessed run (absolute)",
        "max_regression_relative": "largest drop as a fraction of the last blessed top-1",
        "max_drop_vs_fp32": "largest drop below the run's own fp32 top-1",
    },
}
