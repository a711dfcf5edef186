"""The knobs the search agents (builtin random search, Optuna) turn, and the values they try: one table, so
both searches cover exactly the same space and a comparison between them is fair. Before a night, the
space goes through `train.py --check --check-space` in the sandbox; what train.py refuses, alone or in a
pair, the searches never propose.

Left out on purpose: MODEL_NAME (the model is the human's choice), the seed (the loop owns it), PRECISION
(fp16 needs loss scaling and crashes some encoders) and the speed-only switches (they cannot change F1)."""

from __future__ import annotations

# name -> (direction label, candidate values); CLASS_WEIGHTS, THRESHOLDS and AUX_DATASETS are built from the
# data (see options()).
KNOBS: dict[str, tuple[str, list]] = {
    "LEARNING_RATE": ("learning rate", [5e-6, 1e-5, 2e-5, 3e-5, 5e-5, 8e-5, 1e-4, 2e-4]),
    "EPOCHS": ("training length", [3, 5, 8, 10, 15, 20]),
    "BATCH_SIZE": ("batch size", [4, 8, 16, 32]),
    "GRAD_ACCUM": ("batch size", [1, 2, 4]),
    "MAX_LENGTH": ("input length", [128, 192, 256, 384]),
    "WINDOW_OVERLAP": ("input length", [32, 64, 96]),
    "WARMUP_RATIO": ("schedule", [0.0, 0.05, 0.1, 0.2]),
    "SCHEDULE": ("schedule", ["cosine", "linear", "constant"]),
    "WEIGHT_DECAY": ("regularisation", [0.0, 0.01, 0.05, 0.1]),
    "MAX_GRAD_NORM": ("regularisation", [0.0, 0.5, 1.0, 5.0]),
    "LABEL_SMOOTHING": ("loss", [0.0, 0.05, 0.1, 0.2]),
    "LABEL_SCHEME": ("label scheme", ["BIO", "IO"]),
    "CLASS_WEIGHTS": ("loss", []),
    "THRESHOLDS": ("post-processing", []),
    "BOUNDARY_TRIM": ("post-processing", [True, False]),
    "MC_DROPOUT_PASSES": ("MC dropout", [0, 4, 8, 16]),
    "MC_DROPOUT_WEIGHT": ("MC dropout", [0.3, 0.5, 0.7, 1.0]),
    "AUX_DATASETS": ("transfer", []),
    "AUX_EPOCHS": ("transfer", [1, 2, 3]),
    "AUX_LR": ("transfer", [2e-5, 5e-5, 1e-4]),
    "TRANSFER_MODE": ("transfer", ["sequential", "mixed"]),
}
# Knobs that do nothing unless another knob is on: (knob, the knob it needs, its "off" value).
DEPENDS_ON = {
    "MC_DROPOUT_WEIGHT": ("MC_DROPOUT_PASSES", 0),
    "AUX_EPOCHS": ("AUX_DATASETS", []),
    "AUX_LR": ("AUX_DATASETS", []),
    "TRANSFER_MODE": ("AUX_DATASETS", []),
}


def class_weight_options(labels: list[str]) -> list[dict]:
    """Uniform; down-weighted O; all entity labels up-weighted; one type's labels up-weighted."""
    entity_labels = [label for label in labels if label != "O"]
    types = sorted({label[2:] for label in entity_labels})
    options: list[dict] = [{}, {"O": 0.5}, {"O": 0.3}]
    options += [{label: weight for label in entity_labels} for weight in (2.0, 3.0, 5.0)]
    options += [{f"B-{name}": 2.0, f"I-{name}": 2.0} for name in types]
    return options


def threshold_options(entity_types: list[str]) -> list[dict]:
    """Argmax; one threshold for every type; a lower threshold for one type."""
    options: list[dict] = [{}]
    options += [{name: threshold for name in entity_types} for threshold in (0.2, 0.3, 0.4, 0.5)]
    options += [{name: threshold} for name in entity_types for threshold in (0.3, 0.4)]
    return options


def aux_options(aux_names: list[str]) -> list[list[str]]:
    """No transfer, or one prepared auxiliary set (data/aux/<name>/) first."""
    return [[]] + [[name] for name in sorted(aux_names)]


def options(labels: list[str], entity_types: list[str], aux_names: list[str] = ()) -> dict[str, list]:
    """knob -> the values a search may set it to, for this data."""
    space = {name: list(values) for name, (_, values) in KNOBS.items()}
    space["CLASS_WEIGHTS"] = class_weight_options(labels)
    space["THRESHOLDS"] = threshold_options(entity_types)
    space["AUX_DATASETS"] = aux_options(list(aux_names)) if aux_names else []
    return {name: values for name, values in space.items() if values}


def direction_of(name: str) -> str:
    return KNOBS[name][0]


def allowed(config: dict, refused: list[dict]) -> bool:
    """False when `config` holds a change that `train.py --check --check-space` refused (one value, or two
    knobs' values together, such as class weights for B- labels under the IO scheme): train.py's own check
    is the only judge of a valid config, so no search re-implements it."""
    return not any(all(name in config and config[name] == value for name, value in entry["change"].items())
                   for entry in refused)


def checked_options(options: dict[str, list], refused: list[dict]) -> dict[str, list]:
    """The options less the values train.py refuses on their own."""
    checked = {name: [value for value in values if allowed({name: value}, refused)] for name, values in options.items()}
    return {name: values for name, values in checked.items() if values}


def inert(config: dict, name: str) -> bool:
    """True when changing `name` cannot matter because the knob it needs is off."""
    if name not in DEPENDS_ON:
        return False
    needed, off = DEPENDS_ON[name]
    return config.get(needed, off) == off
