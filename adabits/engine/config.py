"""The one training-config schema (the original AdaBits code's flat keys plus ours) and its loading.

`load_config(["app:apps/x.yml", "lr=0.05", "bs:256"])` reads the file (with `!include`), applies the
overrides (values parsed as YAML), checks every key against the schema and returns a validated,
resolved `TrainConfig` plus notes for the user (ignored keys of the original). Every problem raises
ConfigError with a message that names the key, where it came from and, if possible, the fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal, get_args, get_type_hints

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from ..data.recipes import DATA_LOADERS, TRANSFORMS
from ..errors import ConfigError
from ..joint.objective import IN_STEP_TEACHERS, Distill, JointLoss
from ..quant.bitwidth import Bits, format_bits, parse_bits, parse_bits_list
from ..quant.config import QuantConfig
from .optim import OPTIMIZERS
from .precision import Precision
from .schedules import SCHEDULES
from .yaml_io import read_yaml

#: the original's module paths for its models -> our registry names
MODEL_ALIASES = {
    "models.q_resnet_cifar": "resnet_cifar",
    "models.q_mobilenet_v1": "mobilenet_v1",
    "models.q_mobilenet_v2": "mobilenet_v2",
    # the paper's ImageNet ResNets were not in the original code; these follow its naming
    "models.q_resnet18": "resnet18",
    "models.q_resnet34": "resnet34",
    "models.q_resnet50": "resnet50",
}
#: short keys accepted on the command line, as the original's `bs:256`
KEY_ALIASES = {"bs": "batch_size"}
#: keys of the original that only described the cluster job
MACHINE_KEYS = ("num_gpus_per_job", "num_cpus_per_job", "memory_per_job", "gpu_type", "batch_size_per_gpu")
#: why a value that looks like a word or a name arrived as a boolean
YAML_BOOLEANS = "(YAML reads unquoted yes, no, on, off, true and false as booleans)"
#: keys of the original accepted for compatibility, with why they change nothing here
INERT_KEYS = {
    "reset_parameters": "models are always initialised as docs/models.md says",
    "width_divisor": "MobileNet widths are fixed by the model",
    "min_width": "MobileNet widths are fixed by the model",
    "distributed_all_reduce": "gradients are always all-reduced once per optimizer step (docs/distributed.md)",
    "profiling": "profiling is not part of `train`; run `adabits profile app:...`",
    "model_profiling_verbose": "profiling is not part of `train`; run `adabits profile app:... verbose=true`",
}
NOTE_IF_TRUE = {
    "profiling_only": "profiling is not part of `train`; training runs instead (run `adabits profile app:...`)",
    "bn_calib": "BN calibration is not part of `train`; it is ignored (run `adabits calibrate app:... bits=B`)",
}


#: what fp_pretrained_format: plain sets where the config is silent (adabits.QuantConfig.pretrained, calibration)
PLAIN_START: dict[str, Any] = {"clamp": False, "rescale": False, "rescale_conv": False, "weight_quantizer": "channel",
                               "weight_quant_scheme": "centered", "alpha_init": "calibrate"}
#: of those, the keys whose other values would make the float network compute another function
PLAIN_FUNCTION_KEYS = frozenset({"clamp", "rescale", "rescale_conv"})


# allow_inf_nan: `.inf` and `.nan` are YAML floats that pass every bound check (lr > 0) and train nothing
_STRICT = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True, allow_inf_nan=False)

#: the quantization keys: adabits.QuantConfig's fields with their types and defaults, declared there alone (YAML
#: stays flat: `clamp: false` at the top level, as in the original's configs)
QuantKeys: type[BaseModel] = create_model(
    "QuantKeys", __config__=_STRICT,
    **{f.name: (hint, f.default) for f in dataclasses.fields(QuantConfig)
       if (hint := get_type_hints(QuantConfig)[f.name])},  # type: ignore[call-overload]
)


class TrainConfig(QuantKeys):  # type: ignore[valid-type,misc]  # a class create_model made
    """Every key a training config may hold; defaults follow the original AdaBits code's recipe."""

    model_config = _STRICT

    @property
    def quant(self) -> QuantConfig:
        """The quantization options as the library takes them."""
        return QuantConfig(**{name: getattr(self, name) for name in QuantConfig.field_names()})

    # model
    model: str = "resnet20"
    depth: int | None = Field(None, gt=0)
    model_options: dict[str, Any] = {}  # further options of the model family, e.g. {width: 8, classifier_std: 1.0}
    num_classes: int | None = Field(None, ge=2)
    in_chans: int | None = Field(None, ge=1)
    image_size: int | None = Field(None, ge=4)
    topk: list[int] = [1, 5]
    bits_list: list[Bits] = [8, 6, 5, 4]  # an entry is B or [weight_bits, act_bits]; 32 = full precision
    adaptive_training: bool = True
    # PACT clipping levels at the start: "fixed" (8 conv / 10 linear, as the original), "mse" (per
    # bit-width, least quantization error on alpha_init_batches training batches) or "calibrate"
    # (adabits.calibrate on those batches: weight clipping, clipping levels and BN statistics per bit-width)
    alpha_init: Literal["fixed", "mse", "calibrate"] = "fixed"
    alpha_init_batches: int = Field(2, ge=1)
    normalize: bool = False
    bn_calib: bool = False
    reset_parameters: bool = True
    # data
    dataset: str = "fashion_mnist"
    dataset_dir: str | None = None
    download: bool = False
    data_transforms: str | None = None
    data_loader: str | None = None
    data_loader_workers: int = Field(0, ge=0)
    drop_last: bool = False
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int | None = Field(None, gt=0)
    crop_padding: int | None = Field(None, ge=0)
    random_flip: bool | None = None
    synthetic_train_size: int = Field(512, gt=0)
    synthetic_val_size: int = Field(256, gt=0)
    # optimization
    optimizer: str = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # at 1 or more the momentum buffer never decays
    nesterov: bool = True
    weight_decay: float = Field(4e-5, ge=0)
    optim_decay: float = Field(0.9, gt=0, lt=1)
    optim_eps: float = Field(1e-8, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    lr_scheduler: str = "multistep"
    num_epochs: int = Field(200, ge=1)
    max_iters_per_epoch: int | None = Field(None, gt=0)
    multistep_lr_milestones: list[float] = [100, 150]
    multistep_lr_gamma: float = Field(0.1, gt=0, le=1)
    exp_decaying_lr_gamma: float = Field(0.98, gt=0, le=1)
    exp_decaying_period: int = Field(1, ge=1)
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_start: float | None = Field(None, ge=0, le=1)
    # the joint step (docs/training.md): how the per-bit losses combine (`sum`, the seed's, needs the lr
    # divided by the number of bit-widths; `mean` keeps one lr), in-place distillation, and the sandwich
    # rule (per step the highest, the lowest and sandwich_middle others drawn at random; null: all)
    joint_loss: JointLoss = "sum"
    distill: Distill = "none"
    distill_weight: float = Field(1.0, ge=0, le=1)  # of the distillation loss; the label loss gets 1 - it
    distill_temperature: float = Field(1.0, gt=0)
    sandwich_middle: int | None = Field(None, ge=0)
    # per step, this many per-layer assignments drawn at random (each layer at a bit-width of bits_list) trained
    # after the uniform bit-widths, so that mixed assignments (adabits.set_bits(model, {layer: bits})) stay accurate
    mixed_assignments: int = Field(0, ge=0, le=16)
    # run
    random_seed: int = 1995
    # distributed (docs/distributed.md): on under torchrun, or required by distributed: true
    use_diff_seed: bool = False  # each process augments with its own seed (random_seed + rank)
    distributed: bool = False
    distributed_all_reduce: bool = False
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: NCCL on CUDA, Gloo on CPU
    sync_bn: bool = False  # BN statistics over the global batch (torch.nn.SyncBatchNorm, CUDA only)
    log_dir: str = "runs"
    run_name: str | None = None
    test_only: bool = False
    resume: str | None = None
    pretrained_dir: str | None = None
    pretrained_file: str | None = None
    fp_pretrained_file: str | None = None
    # "adabits": a float model trained with SAT's weight transform (the seed's stage 1); "plain": a float
    # state dict of an ordinary PyTorch model (torchvision, timm, your own). plain sets the keys of
    # PLAIN_START that the config does not set itself, so the float network computes what the source did
    fp_pretrained_format: Literal["adabits", "plain"] = "adabits"
    profiling: list[str] | None = None
    profiling_only: bool = False
    model_profiling_verbose: bool = False
    device: str = "auto"
    compile: bool = False
    # the quantizers alone compiled (adabits.quant.kernels), the model eager: docs/training.md, "Speed"
    compile_quantizers: bool = False
    # autocast for convolutions and matrix products; quantizers stay float32 (engine/precision.py)
    precision: Precision = "fp32"
    cudnn_benchmark: bool = True  # CUDA: cuDNN picks each convolution's fastest algorithm once (engine/backends.py)
    channels_last: bool = False
    num_threads: int | None = Field(None, ge=1, le=1024)  # torch crashes creating very many threads
    log_every: int = Field(20, ge=1)
    progress: bool = True
    tensorboard: bool = False  # mirror metrics.jsonl to TensorBoard events (the `tensorboard` extra)
    # accepted and ignored: the original's machine description of a cluster job
    num_gpus_per_job: Any = None
    num_cpus_per_job: Any = None
    memory_per_job: Any = None
    gpu_type: Any = None
    batch_size_per_gpu: Any = None
    width_divisor: Any = None
    min_width: Any = None
    # loading weights: a pretrained_file or fp_pretrained_file that fits only part of the model (keys
    # without a value, unknown keys, other shapes) is an error unless this asks to load what fits
    partial_load: bool = False
    # preemptible runs (docs/distributed.md): also write latest_checkpoint.pt every N optimizer steps,
    # with the position inside the epoch, so that a killed run resumes mid-epoch bitwise identical
    checkpoint_every_steps: int | None = Field(None, ge=1)
    # a step whose loss or gradients are not finite (engine/divergence.py): stop the run naming the last good
    # checkpoint, or skip the step (weights, optimizer and schedule as they were) and count it
    nonfinite: Literal["stop", "skip"] = "stop"

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        name = MODEL_ALIASES.get(name, name)
        known = _known_models()
        if known is not None and name not in known:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(known)}")
        return name

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """A YAML boolean (yes/no/on/off/true/false) is not a number, though pydantic would read it as 1 or 0."""
        values = value if isinstance(value, list) else [value]
        if info.field_name in _NUMERIC_FIELDS and any(isinstance(v, bool) for v in values):
            raise ValueError(f"expected a number, got the boolean {value!r} {YAML_BOOLEANS}")
        return value

    @field_validator("bits_list", mode="before")
    @classmethod
    def _valid_bits(cls, bits: Any) -> list[Bits]:
        """The one validation of adabits.quant.bitwidth; entries come back as B, or (w, a) when they differ."""
        if not isinstance(bits, (list, tuple)):
            raise ValueError(f"bits_list must be a list of bit-widths such as [8, 4] or [[4, 8], 8], got {bits!r}")
        return [format_bits(pair) for pair in parse_bits_list(bits)]

    @field_validator("topk")
    @classmethod
    def _valid_topk(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"topk must be positive integers, got {ks}")
        return sorted(set(ks) | {1})

    @field_validator("optimizer", "lr_scheduler")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        known = OPTIMIZERS if info.field_name == "optimizer" else SCHEDULES
        if name not in known:
            raise ValueError(f"unknown {info.field_name} {name!r}; known: {', '.join(sorted(known))}")
        return name

    @field_validator("model_options")
    @classmethod
    def _positive_model_numbers(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The model families' numeric options (width, classifier_std) are sizes and scales: positive and finite."""
        for key, value in options.items():
            if isinstance(value, bool) or (isinstance(value, (int, float)) and not 0 < value < math.inf):
                raise ValueError(f"model_options {key} must be a positive finite number, got {value!r}")
        return options

    @field_validator("multistep_lr_milestones")
    @classmethod
    def _ascending_milestones(cls, milestones: list[float]) -> list[float]:
        if any(m < 0 for m in milestones) or milestones != sorted(milestones):
            raise ValueError(f"multistep_lr_milestones must be epochs from 0 up, in ascending order, got {milestones}")
        return milestones

    @field_validator("run_name")
    @classmethod
    def _inside_log_dir(cls, name: str | None) -> str | None:
        if name is not None and (PurePath(name).is_absolute() or ".." in PurePath(name).parts):
            raise ValueError(f"run_name names a folder inside log_dir, got {name!r}; set log_dir for another place")
        return name

    @field_validator("data_transforms", "data_loader")
    @classmethod
    def _known_data_name(cls, name: str | None, info: ValidationInfo) -> str | None:
        known = list(TRANSFORMS) if info.field_name == "data_transforms" else list(DATA_LOADERS)
        if name is not None and name not in known:
            raise ValueError(f"unknown {info.field_name} {name!r}; known: {', '.join(known)}")
        return name

    @field_validator("device")
    @classmethod
    def _valid_device(cls, dev: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", dev):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {dev!r}")
        return dev

    @field_validator("resume", "pretrained_dir", "pretrained_file", "fp_pretrained_file", "dataset_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _plain_start(self) -> "TrainConfig":
        """fp_pretrained_format: plain fills the keys of PLAIN_START the config leaves unset and refuses the ones
        it sets otherwise where they would change the source model's function."""
        if self.fp_pretrained_format != "plain":
            return self
        if not self.fp_pretrained_file:
            raise ValueError("fp_pretrained_format: plain describes the file in fp_pretrained_file; set it")
        for key, value in PLAIN_START.items():
            if key not in self.model_fields_set:
                object.__setattr__(self, key, value)
            elif key in PLAIN_FUNCTION_KEYS and getattr(self, key) != value:
                raise ValueError(f"fp_pretrained_format: plain loads a float model trained without SAT's weight "
                                 f"transform; {key}: {str(getattr(self, key)).lower()} would change what it "
                                 f"computes (set {key}: {str(value).lower()}, or leave it out)")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.warmup_epochs > self.num_epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) exceeds num_epochs ({self.num_epochs})")
        self._consistent_joint_step()
        if self.depth is not None and "depth" not in _model_options(self.model):
            takes = ", ".join(name for name in _known_models() or [] if "depth" in _model_options(name))
            raise ValueError(f"depth is not an option of model {self.model}, whose depth is fixed (remove depth, or "
                             f"use a model that takes one: {takes})")
        return self

    def _consistent_joint_step(self) -> None:
        """Distillation and sampling need what they act on: a teacher, and bit-widths to teach or draw."""
        trained = len(self.train_bits)
        alone = " (adaptive_training: false trains bits_list[0] alone)" if not self.adaptive_training else ""
        if self.distill == "none" and (self.distill_weight, self.distill_temperature) != (1.0, 1.0):
            raise ValueError("distill_weight and distill_temperature apply to distill: highest, recursive or float; "
                             "with distill: none they would change nothing, so remove them or choose a teacher")
        if self.distill == "float" and not self.fp_pretrained_file:
            raise ValueError("distill: float distils from the float model in fp_pretrained_file; set "
                             "fp_pretrained_file, or use distill: highest or recursive")
        if self.distill == "float" and self.partial_load:
            raise ValueError("distill: float needs the whole float model of fp_pretrained_file as its teacher, "
                             "but partial_load: true loads only what fits; use distill: highest or recursive")
        if self.distill in IN_STEP_TEACHERS and trained < 2:
            raise ValueError(f"distill: {self.distill} teaches lower bit-widths with higher ones of the same step, "
                             f"but this run trains only {trained} bit-width{alone}; use distill: float or none")
        if self.sandwich_middle is not None and trained < 3:
            raise ValueError(f"sandwich_middle samples the bit-widths between the highest and the lowest, but this "
                             f"run trains only {trained}{alone}; remove sandwich_middle (null trains all)")
        if self.sandwich_middle is not None and not self.sandwich_middle < trained - 2:
            raise ValueError(f"sandwich_middle {self.sandwich_middle} needs more than {self.sandwich_middle + 2} "
                             f"bit-widths (the highest, the lowest and {self.sandwich_middle} others), but this run "
                             f"trains {trained}; use a value from 0 to {trained - 3}, or null to train all")
        if self.distill in IN_STEP_TEACHERS or self.sandwich_middle is not None:
            _check_ordered(self.train_bits)

    @property
    def train_bits(self) -> list[Bits]:
        """The bit-widths trained (and evaluated): all of bits_list jointly, or its first entry alone."""
        return list(self.bits_list) if self.adaptive_training else self.bits_list[:1]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def _check_ordered(bits_list: list[Bits]) -> None:
    """A teacher of the same step, and the sandwich's ends, need a highest and a lowest bit-width: the one
    with the most weight and activation bits, and the one with the fewest."""
    pairs = [parse_bits(b) for b in bits_list]
    top, bottom = max(pairs), min(pairs)
    unordered = [format_bits(p) for p in pairs if not (bottom[0] <= p[0] <= top[0] and bottom[1] <= p[1] <= top[1])]
    if unordered:
        raise ValueError(f"bits_list {bits_list} has no highest and lowest bit-width in both weight and activation "
                         f"bits ({unordered} fall outside {format_bits(top)} .. {format_bits(bottom)}), which "
                         "distill: highest / recursive and sandwich_middle need")


def _takes_numbers(annotation: Any) -> bool:
    """Whether a field's type is int or float, also inside `X | None` or a list (Any and bool are not)."""
    return annotation in (int, float) or any(_takes_numbers(arg) for arg in get_args(annotation))


#: the fields whose values are numbers (or lists of them): booleans are refused there
_NUMERIC_FIELDS = frozenset(name for name, f in TrainConfig.model_fields.items()
                            if name != "bits_list" and _takes_numbers(f.annotation))


def _known_models() -> list[str] | None:
    """The model registry's names, or None while the models package is not importable."""
    try:
        import adabits
        return list(adabits.list_models())
    except (ImportError, AttributeError):
        return None


def _model_options(name: str) -> frozenset[str]:
    """A registered model's own options (its constructor's), where a model-specific key is checked."""
    from ..models.registry import model_options

    return model_options(name)


@dataclass
class LoadedConfig:
    config: TrainConfig
    notes: list[str] = field(default_factory=list)
    source: str | None = None


def split_args(args: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """`app:PATH` (or a bare *.yml path) and `key=value` / `key:value` overrides, in order."""
    app: str | None = None
    overrides: list[tuple[str, str]] = []
    for arg in args:
        if arg.startswith("app:"):
            app = arg[4:]
        elif arg.endswith((".yml", ".yaml")) and "=" not in arg and ":" not in arg:
            app = arg
        elif "=" in arg:
            key, value = arg.split("=", 1)
            overrides.append((key.strip(), value))
        elif ":" in arg:
            key, value = arg.split(":", 1)
            overrides.append((key.strip(), value))
        else:
            raise ConfigError(f"cannot read argument {arg!r}: expected app:PATH.yml or key=value")
    return app, overrides


def _parse_value(key: str, text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"cannot parse the value of {key} on the command line: {text!r}") from None


def _unknown_key_message(key: str, origin: str) -> str:
    fields = list(TrainConfig.model_fields)
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; `adabits train --keys` lists the valid keys"
    return f"unknown key '{key}' in {origin}{hint}"


def _format_validation(exc: ValidationError, origins: dict[str, str]) -> str:
    lines = []
    for err in exc.errors():
        key = str(err["loc"][0]) if err["loc"] else ""
        msg = err["msg"].removeprefix("Value error, ")
        where = f" (from {origins[key]})" if key in origins else ""
        shown = key and err["type"] != "value_error" and not isinstance(err.get("input"), dict)
        value = f", got {err['input']!r}" if shown else ""
        if err["type"] == "string_type" and isinstance(err.get("input"), (bool, int, float)):
            value += f" {YAML_BOOLEANS}; quote it" if isinstance(err["input"], bool) else "; quote it to give a name"
        lines.append(f"bad value for '{key}'{where}: {msg}{value}" if key else msg)
    return "\n".join(lines)


def collect_notes(raw: dict[str, Any]) -> list[str]:
    notes = []
    machine = [k for k in MACHINE_KEYS if k in raw]
    if machine:
        notes.append(f"ignoring {', '.join(machine)} (cluster settings of the original; processes are started by torchrun, see docs/distributed.md)")
    for key, why in INERT_KEYS.items():
        if key in raw and raw[key] not in (None, False, 0, [], ""):
            notes.append(f"ignoring {key}: {why}")
    for key, why in NOTE_IF_TRUE.items():
        if raw.get(key) is True:
            notes.append(f"{key}: {why}")
    return notes


def build_config(raw: dict[str, Any], origins: dict[str, str] | None = None) -> TrainConfig:
    """Validate a flat mapping; ConfigError names each bad key and where it came from."""
    origins = origins or {}
    for key in raw:
        if key not in TrainConfig.model_fields:
            raise ConfigError(_unknown_key_message(key, origins.get(key, "the config")))
    try:
        return TrainConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, origins)) from None


def load_config(args: list[str], require_app: bool = True) -> LoadedConfig:
    """Load `app:PATH` plus overrides into a validated, resolved config (run_name defaults to the file's stem)."""
    app, overrides = split_args(args)
    raw: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if app is not None:
        raw, origins = read_yaml(Path(app))
    elif require_app and not overrides:
        raise ConfigError("no config given: run e.g. `python train.py app:apps/fashion_mnist/q_resnet20_adabits.yml`")
    for key, text in overrides:
        key = KEY_ALIASES.get(key, key)
        raw[key] = _parse_value(key, text)
        origins[key] = "the command line"
    cfg = build_config(raw, origins)
    if cfg.run_name is None:
        cfg.run_name = Path(app).stem if app else "run"
    return LoadedConfig(cfg, collect_notes(raw), app)
