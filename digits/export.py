"""Export a saved run for other tools: ONNX, a PyTorch ``state_dict``, safetensors.

Every export is the same function of the same input:

- input: float32 images of shape (N, 1, H, W) (28x28 for MNIST), values in
  [0, 1] (8-bit pixels / 255), light ink on a dark background (0 is background),
  as MNIST stores its digits and as ``digits.preprocess.preprocess`` leaves a
  photo or a drawing;
- output: class probabilities of shape (N, K), softmax included, the columns in
  the order of the run's class names.

How: the run's model is loaded by ``digits.store`` (files checked against their
SHA-256, nothing unpickled) and turned into a list of ``Step``s, one per layer of
the exported network, whose weights are already in PyTorch's channels-first
layout. The three writers all read those steps, so the ONNX graph, the PyTorch
``state_dict`` and the safetensors file hold the same tensors under the same
names (``"0.weight"``, ``"0.bias"``, ...: the index of the layer in
``torch.nn.Sequential``):

- ``digits`` keeps images channels-last, (N, H, W, C), and a conv kernel as
  (kh, kw, C_in, C_out); PyTorch and ONNX want (N, C, H, W) and
  (C_out, C_in, kh, kw), so the kernel is transposed (3, 2, 0, 1);
- ``Flatten`` therefore flattens in (H, W, C) order in ``digits`` and in
  (C, H, W) order in the export: the first dense layer after it has its input
  rows reordered to match (``_dense_after_flatten``), and a dense ``W`` of shape
  (in, out) becomes PyTorch's ``weight`` of shape (out, in);
- the scikit-learn MLP's ``coef_i`` (in, out) and ``intercept_i`` become the
  weight and bias of its i-th ``Linear`` layer, after a ``Flatten`` of the
  (N, 1, H, W) input into rows of H*W pixels, as ``digits`` flattens it.

The PyTorch export also writes its ``torch.nn`` module definition as a small
Python file beside the weights (``<stem>.py``, see ``torch_source``), which the
safetensors export writes too. Every export writes ``<FILE>.README.txt`` beside
it with the input note and the names and shapes of the tensors; ONNX and
safetensors also carry the note inside the file (ONNX's ``doc_string`` and
``metadata_props``, safetensors' ``__metadata__``). Each file is written
atomically.

``onnx``, ``torch`` and ``safetensors`` are optional: each is imported only by
the export that needs it, and a missing one raises ``MissingPackage`` naming what
to install. Left out: the ``dense`` and ``cnn`` kinds' training state (optimizer,
history) and the "not sure" thresholds of ``digits predict``, which are computed
from the run's validation images and are not part of the network.
"""

from __future__ import annotations

import importlib
import json
import keyword
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digits import __version__, files, store
from digits.errors import ConfigError, DigitsError, StorageError

FORMATS = ("onnx", "torch", "safetensors")
# Each format's optional package (its module), and how to install it: onnx and
# safetensors come with the package's "export" extra; torch is left to the user,
# whose machine decides the build (the tests ran 2.13.0's CPU build).
PACKAGES = {
    "onnx": ("onnx", "'digits[export]' (or: pip install onnx==1.23.2)"),
    "torch": (
        "torch",
        "torch==2.13.0 (its CPU build: add --index-url "
        "https://download.pytorch.org/whl/cpu)",
    ),
    "safetensors": (
        "safetensors",
        "'digits[export]' (or: pip install safetensors==0.8.0)",
    ),
}
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# ONNX operator set 17 and IR version 8 (ONNX 1.12, 2022), which onnxruntime
# reads from its version 1.13 on; nothing here needs a newer operator.
ONNX_OPSET = 17
ONNX_IR_VERSION = 8
# Keys of the in-file metadata (ONNX metadata_props, safetensors __metadata__).
META_PREFIX = "digits."


class MissingPackage(DigitsError):
    """The package an export format needs is not installed; the message says
    what to install."""


# -- the exported network, as steps ----------------------------------------------


@dataclass(frozen=True)
class Step:
    """One layer of the exported network, channels-first.

    ``kind`` is a key of ``TORCH_LINES`` and ``ONNX_NODES``. ``weight`` is in
    PyTorch's layout: (C_out, C_in, kh, kw) for "conv", (out, in) for "linear";
    ``bias`` is (C_out,) or (out,). ``source`` says which ``digits`` arrays the
    tensors came from, and how, for the README beside the file.
    """

    kind: str
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    padding: str = "valid"  # "conv": "valid" or "same" (as digits and PyTorch)
    rate: float = 0.0  # "dropout": the training-time rate (identity here)
    source: str = ""


@dataclass(frozen=True)
class Network:
    """A run as the exports see it: its steps and what its input and output are."""

    run: str  # the run's name
    kind: str  # the registry's kind: cnn, dense or mlp
    label: str
    dataset: str
    image_shape: tuple[int, int]  # (H, W)
    class_names: tuple[str, ...]
    steps: list[Step] = field(default_factory=list)

    def tensors(self) -> dict[str, np.ndarray]:
        """The weights under PyTorch's ``nn.Sequential`` names ("0.weight"...),
        float32 and C-contiguous (what safetensors and torch.save store)."""
        out: dict[str, np.ndarray] = {}
        for i, step in enumerate(self.steps):
            for name in ("weight", "bias"):
                array = getattr(step, name)
                if array is not None:
                    out[f"{i}.{name}"] = np.ascontiguousarray(array, np.float32)
        return out

    def note(self) -> str:
        """The input contract, in words, for the file's metadata and README."""
        return input_note(self.image_shape, self.class_names, self.dataset)


def input_note(
    image_shape: tuple[int, int], class_names: tuple[str, ...], dataset: str
) -> str:
    """What an exported model takes and gives, in a few plain sentences."""
    h, w = image_shape
    where = (
        "as MNIST stores its digits"
        if dataset == "mnist"
        else f"as the {dataset} images it was trained on"
    )
    text = (
        f"Input '{INPUT_NAME}': float32 images of shape (N, 1, {h}, {w}), values "
        f"in [0, 1] (8-bit pixels / 255), light ink on a dark background (0 is "
        f"background), {where}. "
    )
    frame = _frame(h) if h == w else None
    if frame is not None:
        centred = (
            "by its centre of mass" if frame.centre == "mass" else "by its bounding box"
        )
        text += (
            f"A photo or drawing must first be made MNIST-like as "
            f"digits.preprocess.preprocess(image, {h}) does for `digits predict`: "
            f"grayscale, inverted if its background is light, cleaned, cropped to "
            f"the ink, scaled to fit a {frame.box}x{frame.box} box keeping its "
            f"proportions and centred in the {h}x{w} frame {centred}. "
        )
    return text + (
        f"Output '{OUTPUT_NAME}': class probabilities of shape (N, "
        f"{len(class_names)}), softmax included, columns in the order "
        f"{', '.join(class_names)}."
    )


def _frame(side: int):
    """How ``preprocess`` frames a digit of ``side`` pixels; None if it cannot."""
    from digits.errors import PreprocessError
    from digits.preprocess import frame_for

    try:
        return frame_for(side)
    except PreprocessError:
        return None


def network(ref: str | store.Run) -> Network:
    """The run ``ref`` names (a run name, a folder, ``default``...) as a
    ``Network``; ConfigError if its kind cannot be exported."""
    run = store.open_run(ref, allow_paths=True)
    if run.kind not in CONVERTERS:
        raise ConfigError(
            f"Run {run.name} is a {run.kind} model; digits exports "
            f"{', '.join(CONVERTERS)} models."
        )
    model = store.load_model(run)
    classes = np.asarray(model.classes_)
    n = len(run.class_names)
    # predict_proba_full puts class j in column j; an export has no such step,
    # so its output columns must already be the classes 0..K-1 in order.
    if classes.dtype.kind not in "iu" or not np.array_equal(classes, np.arange(n)):
        raise ConfigError(
            f"Run {run.name} was trained on classes {classes.tolist()}, not on "
            f"all {n} classes 0..{n - 1} of its dataset, so its outputs are not "
            f"one column per class; it cannot be exported. Train it on every class."
        )
    h, w = run.image_shape
    net = Network(
        run=run.name,
        kind=run.kind,
        label=run.meta.get("label", run.kind),
        dataset=str(run.meta["dataset"]["name"]),
        image_shape=(int(h), int(w)),
        class_names=run.class_names,
    )
    net.steps.extend(CONVERTERS[run.kind](model, (int(h), int(w))))
    return net


def _from_sequential(model, image_shape: tuple[int, int]) -> list[Step]:
    """The steps of a ``CNNClassifier`` (the ``cnn`` and ``dense`` kinds).

    A network with conv layers keeps its layer indices (digits' ``"3.W"``
    becomes ``"3.weight"``); a dense network gets a ``Flatten`` first, so its
    indices are one more.
    """
    layers = model.model_.layers
    h, w = image_shape
    shape: tuple[int, ...] = (h, w, 1)  # one image, channels-last, as digits sees it
    steps: list[Step] = []
    if type(layers[0]).__name__ != "Conv2D":
        steps.append(Step("flatten", source="(N, 1, H, W) -> (N, H*W), row by row"))
        shape = (h * w,)
    flattened_from: tuple[int, ...] | None = None
    for i, layer in enumerate(layers):
        name = type(layer).__name__
        if name == "Conv2D":
            steps.append(
                Step(
                    "conv",
                    layer.params["W"].transpose(3, 2, 0, 1),  # (C_out, C_in, kh, kw)
                    layer.params["b"],
                    padding=layer.padding,
                    source=f"{i}.W transposed (3, 2, 0, 1); {i}.b",
                )
            )
        elif name == "Dense":
            if flattened_from is not None:
                weight = _dense_after_flatten(layer.params["W"], flattened_from)
                how = f"{i}.W's rows reordered from (H, W, C) to (C, H, W), transposed"
                flattened_from = None
            else:
                weight, how = layer.params["W"].T, f"{i}.W transposed"
            steps.append(
                Step("linear", weight, layer.params["b"], source=f"{how}; {i}.b")
            )
        elif name == "Flatten":
            flattened_from = shape  # (H, W, C) of the last conv block
            steps.append(Step("flatten", source="(N, C, H, W) -> (N, C*H*W)"))
        elif name == "Dropout":
            steps.append(Step("dropout", rate=float(layer.rate)))
        elif name in SEQUENTIAL_KINDS:
            steps.append(Step(SEQUENTIAL_KINDS[name]))
        else:
            raise ConfigError(f"digits cannot export a {name} layer (layer {i}).")
        shape = layer.output_shape(shape)
    steps.append(Step("softmax"))  # CNNClassifier.predict_proba's softmax
    return steps


# digits layers without weights and the step each becomes.
SEQUENTIAL_KINDS = {
    "MaxPool2D": "maxpool",
    "ReLU": "relu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
}


def _dense_after_flatten(w: np.ndarray, hwc: tuple[int, ...]) -> np.ndarray:
    """A dense layer's ``W`` (H*W*C, out) that reads digits' channels-last
    flatten, as a PyTorch ``weight`` (out, C*H*W) that reads a channels-first
    one.

    Row ``(h*W + w)*C + c`` of ``W`` weighs pixel (h, w) of channel c; in the
    export that pixel is input ``c*H*W + h*W + w``.
    """
    height, width, channels = hwc
    out = w.shape[1]
    w4 = w.reshape(height, width, channels, out)
    return w4.transpose(3, 2, 0, 1).reshape(out, channels * height * width)


# scikit-learn's activation names and the step each becomes.
MLP_ACTIVATIONS = {
    "relu": "relu",
    "tanh": "tanh",
    "logistic": "sigmoid",
    "identity": "identity",
}


def _from_mlp(model, image_shape: tuple[int, int]) -> list[Step]:
    """The steps of an ``MLPBaseline``: Flatten, then Linear and activation per
    hidden layer, then Linear and scikit-learn's output activation (softmax, or
    for two classes a logistic unit giving [1 - p, p])."""
    mlp = model.model_
    hidden = MLP_ACTIVATIONS[mlp.activation]
    steps = [Step("flatten", source="(N, 1, H, W) -> (N, H*W), row by row")]
    last = len(mlp.coefs_) - 1
    for i, (coef, intercept) in enumerate(
        zip(mlp.coefs_, mlp.intercepts_, strict=True)
    ):
        source = f"coef_{i} transposed; intercept_{i}"
        steps.append(Step("linear", coef.T, intercept, source=source))
        if i < last:
            steps.append(Step(hidden))
    if mlp.out_activation_ == "softmax":
        steps.append(Step("softmax"))
    else:  # "logistic": one output unit, the probability of the second class
        steps += [Step("sigmoid"), Step("two_class")]
    return steps


# How each registry kind becomes steps.
CONVERTERS: dict[str, Callable[..., list[Step]]] = {
    "cnn": _from_sequential,
    "dense": _from_sequential,
    "mlp": _from_mlp,
}


# -- ONNX -------------------------------------------------------------------------


def onnx_model(net: Network):
    """The network as an ``onnx.ModelProto``, built with ``onnx.helper``.

    Input ``image`` (N, 1, H, W) float32, output ``probabilities`` (N, K); the
    initializers are ``net.tensors()`` under the same names.
    """
    onnx = _require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    x = INPUT_NAME
    for i, step in enumerate(net.steps):
        y = OUTPUT_NAME if i == len(net.steps) - 1 else f"{i}.{step.kind}"
        names = {}
        for attr in ("weight", "bias"):
            array = getattr(step, attr)
            if array is not None:
                names[attr] = f"{i}.{attr}"
                inits.append(
                    numpy_helper.from_array(np.asarray(array, np.float32), names[attr])
                )
        more_nodes, more_inits = ONNX_NODES[step.kind](step, x, y, names, f"{i}")
        nodes += more_nodes
        inits += more_inits
        x = y
    h, w = net.image_shape
    graph = helper.make_graph(
        nodes,
        f"digits_{net.kind}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, h, w])],
        [
            helper.make_tensor_value_info(
                OUTPUT_NAME, TensorProto.FLOAT, ["N", len(net.class_names)]
            )
        ],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="digits",
        producer_version=__version__,
        doc_string=net.note(),
    )
    model.ir_version = ONNX_IR_VERSION
    helper.set_model_props(model, metadata(net))
    onnx.checker.check_model(model)
    return model


def _onnx_conv(step: Step, x: str, y: str, names: dict, tag: str):
    from onnx import helper

    k = step.weight.shape[2]
    # digits pads "same" with (k-1)//2 before and k//2 after (PyTorch too), which
    # differ for an even kernel: ONNX takes them apart, [top, left, bottom, right].
    lo, hi = ((k - 1) // 2, k // 2) if step.padding == "same" else (0, 0)
    node = helper.make_node(
        "Conv",
        [x, names["weight"], names["bias"]],
        [y],
        kernel_shape=[k, k],
        pads=[lo, lo, hi, hi],
        strides=[1, 1],
    )
    return [node], []


def _onnx_maxpool(step: Step, x: str, y: str, names: dict, tag: str):
    from onnx import helper

    # 2x2, stride 2, floor: an odd last row or column is dropped, as in digits.
    node = helper.make_node("MaxPool", [x], [y], kernel_shape=[2, 2], strides=[2, 2])
    return [node], []


def _onnx_linear(step: Step, x: str, y: str, names: dict, tag: str):
    from onnx import helper

    # Gemm: y = x @ weight^T + bias, with weight (out, in) as PyTorch keeps it.
    node = helper.make_node("Gemm", [x, names["weight"], names["bias"]], [y], transB=1)
    return [node], []


def _onnx_unary(op: str, **attrs) -> Callable:
    def nodes(step: Step, x: str, y: str, names: dict, tag: str):
        from onnx import helper

        return [helper.make_node(op, [x], [y], **attrs)], []

    return nodes


def _onnx_two_class(step: Step, x: str, y: str, names: dict, tag: str):
    """(N, 1) probabilities p of the second class -> (N, 2) [1 - p, p], as
    scikit-learn's predict_proba gives for two classes."""
    from onnx import helper, numpy_helper

    one = f"{tag}.one"
    rest = f"{tag}.one_minus_p"
    return [
        helper.make_node("Sub", [one, x], [rest]),
        helper.make_node("Concat", [rest, x], [y], axis=1),
    ], [numpy_helper.from_array(np.ones((1, 1), np.float32), one)]


# How each step becomes ONNX nodes: (step, input, output, initializer names,
# tag) -> (nodes, extra initializers). Dropout is the identity at inference.
ONNX_NODES: dict[str, Callable] = {
    "conv": _onnx_conv,
    "maxpool": _onnx_maxpool,
    "linear": _onnx_linear,
    "relu": _onnx_unary("Relu"),
    "tanh": _onnx_unary("Tanh"),
    "sigmoid": _onnx_unary("Sigmoid"),
    "identity": _onnx_unary("Identity"),
    "dropout": _onnx_unary("Identity"),
    "flatten": _onnx_unary("Flatten", axis=1),  # (N, C, H, W) -> (N, C*H*W)
    "softmax": _onnx_unary("Softmax", axis=1),
    "two_class": _onnx_two_class,
}


# -- PyTorch ----------------------------------------------------------------------


def _shape(array: np.ndarray) -> str:
    return str(tuple(array.shape))


def _torch_conv(step: Step) -> str:
    c_out, c_in, k, _ = step.weight.shape
    return f"nn.Conv2d({c_in}, {c_out}, kernel_size={k}, padding={step.padding!r})"


# How each step is written in the module definition.
TORCH_LINES: dict[str, Callable[[Step], str]] = {
    "conv": _torch_conv,
    "maxpool": lambda s: "nn.MaxPool2d(2)",
    "linear": lambda s: f"nn.Linear({s.weight.shape[1]}, {s.weight.shape[0]})",
    "relu": lambda s: "nn.ReLU()",
    "tanh": lambda s: "nn.Tanh()",
    "sigmoid": lambda s: "nn.Sigmoid()",
    "identity": lambda s: "nn.Identity()",
    "dropout": lambda s: f"nn.Dropout({s.rate:g})",
    "flatten": lambda s: "nn.Flatten()",
    "softmax": lambda s: "nn.Softmax(dim=1)",
    "two_class": lambda s: "TwoClass()",
}
# What a comment beside a step says, for the steps that need one.
TORCH_COMMENTS = {
    "maxpool": "2x2, stride 2; an odd last row or column is dropped",
    "dropout": "the identity in eval mode, as build() returns it",
    "flatten": "channels first: (N, C, H, W) -> (N, C*H*W)",
    "softmax": "probabilities, as digits' predict_proba gives them",
    "two_class": "(N, 1) -> (N, 2): [1 - p, p], as scikit-learn gives two classes",
}

_TWO_CLASS = '''

class TwoClass(nn.Module):
    """(N, 1) probability p of the second class -> (N, 2) [1 - p, p]."""

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return torch.cat([1 - p, p], dim=1)
'''


def torch_source(net: Network, module: str, out: Path) -> str:
    """The Python source of the module that defines the network for PyTorch,
    written beside the weights as ``<module>.py``; its ``load(path)`` reads a
    ``.pt`` state_dict or a ``.safetensors`` file."""
    h, w = net.image_shape
    stem = out.name.split(".")[0]  # the same text for FILE.pt and FILE.safetensors
    lines = []
    for i, step in enumerate(net.steps):
        text = f"        {TORCH_LINES[step.kind](step)},"
        notes = [f"{i}"]
        if step.weight is not None:
            notes.append(
                f"{i}.weight {_shape(step.weight)}, {i}.bias {_shape(step.bias)}"
            )
        if step.kind in TORCH_COMMENTS:
            notes.append(TORCH_COMMENTS[step.kind])
        lines.append(f"{text}  # {': '.join(notes)}")
    layers = "\n".join(lines)
    note = _wrap(net.note())
    classes = repr(tuple(net.class_names))
    extra = _TWO_CLASS if any(s.kind == "two_class" for s in net.steps) else ""
    title = f"{net.label} '{net.run}' as a PyTorch module (digits {__version__})."
    return f'''"""{title}

{note}

    import torch
    from {module} import load

    net = load("{stem}.pt")  # or "{stem}.safetensors"
    with torch.no_grad():
        probabilities = net(images)  # images: (N, 1, {h}, {w}) float32 in [0, 1]

build() makes the network with untrained weights; load(path) fills it from a
state_dict saved with torch.save (read with weights_only=True, so nothing is
unpickled) or from a safetensors file. The tensor names are those of
nn.Sequential: "<layer index>.weight" and "<layer index>.bias".
"""

import torch
from torch import nn

INPUT_SHAPE = (1, {h}, {w})  # (channels, height, width) of one image
CLASS_NAMES = {classes}
{extra}

def build() -> nn.Sequential:
    """The network, untrained, in eval mode (dropout off)."""
    return nn.Sequential(
{layers}
    ).eval()


def load(path: str) -> nn.Sequential:
    """build() with the weights in ``path``: a .safetensors file, or a .pt
    state_dict."""
    net = build()
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net
'''


def _wrap(text: str, width: int = 76) -> str:
    import textwrap

    return textwrap.fill(text, width)


def module_name(out: Path) -> str:
    """The name of the module file written beside ``out``: its stem as a Python
    identifier (``default-cnn.pt`` -> ``default_cnn``)."""
    name = re.sub(r"\W", "_", out.name.split(".")[0]) or "model"
    if name[0].isdigit() or keyword.iskeyword(name):
        name = f"model_{name}"
    return name


# -- metadata and README ------------------------------------------------------------


def metadata(net: Network) -> dict[str, str]:
    """What travels inside a file that holds metadata (ONNX, safetensors)."""
    h, w = net.image_shape
    return {
        f"{META_PREFIX}preprocessing": net.note(),
        f"{META_PREFIX}input": f"{INPUT_NAME}: float32 (N, 1, {h}, {w}) in [0, 1]",
        f"{META_PREFIX}output": f"{OUTPUT_NAME}: float32 (N, {len(net.class_names)})",
        f"{META_PREFIX}class_names": json.dumps(list(net.class_names)),
        f"{META_PREFIX}run": net.run,
        f"{META_PREFIX}kind": net.kind,
        f"{META_PREFIX}dataset": net.dataset,
        f"{META_PREFIX}version": __version__,
    }


def readme(net: Network, fmt: str, out: Path, module: str | None) -> str:
    """The text of ``<FILE>.README.txt``: what the file is, what it takes and
    gives, the tensors and where each came from."""
    rows = []
    for i, step in enumerate(net.steps):
        if step.weight is not None:
            rows.append(
                f"  {i}.weight {_shape(step.weight)}, {i}.bias {_shape(step.bias)}"
                f"  <- {step.source}"
            )
    layers = ", ".join(TORCH_LINES[s.kind](s) for s in net.steps)
    how = {
        "onnx": f"onnxruntime.InferenceSession('{out.name}').run(None, "
        f"{{'{INPUT_NAME}': images}})[0]",
        "torch": f"from {module} import load; net = load('{out.name}'); "
        f"net(torch.from_numpy(images))",
        "safetensors": f"safetensors.numpy.load_file('{out.name}') gives the "
        f"tensors; with PyTorch: from {module} import load; net = "
        f"load('{out.name}')",
    }[fmt]
    beside = (
        f" The module is defined in {module}.py, beside this file." if module else ""
    )
    layout = (
        ", channels first; digits' own .npz keeps images channels-last"
        if any(s.kind == "conv" for s in net.steps)
        else ""
    )
    return (
        f"{out.name}: {net.label} '{net.run}' (trained on {net.dataset}), "
        f"exported by digits {__version__} as {fmt}.\n\n"
        f"{_wrap(net.note())}\n\n"
        f"Use it: {how}\n\n"
        f"Layers (as torch.nn): {layers}.{beside}\n\n"
        f"Tensors (float32{layout}):\n" + "\n".join(rows) + "\n"
    )


# -- writing ----------------------------------------------------------------------


def _require(fmt: str):
    """The module the format ``fmt`` needs; MissingPackage naming what to install."""
    module, pin = PACKAGES[fmt]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackage(
            f"Exporting as {fmt} needs the {module} package, which is not "
            f"installed: pip install {pin}"
        ) from None


def _torch_bytes(net: Network) -> bytes:
    torch = _require("torch")
    import io

    state = {k: torch.from_numpy(v) for k, v in net.tensors().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _safetensors_bytes(net: Network) -> bytes:
    _require("safetensors")
    from safetensors.numpy import save

    return save(net.tensors(), metadata=metadata(net))


def _onnx_bytes(net: Network) -> bytes:
    return onnx_model(net).SerializeToString()


# Each format: its bytes, and whether the torch module travels with it.
WRITERS: dict[str, tuple[Callable[[Network], bytes], bool]] = {
    "onnx": (_onnx_bytes, False),
    "torch": (_torch_bytes, True),
    "safetensors": (_safetensors_bytes, True),
}


def planned_files(fmt: str, out: str | Path) -> list[Path]:
    """Every file an export of format ``fmt`` to ``out`` writes, ``out`` first."""
    out = Path(out)
    paths = [out, out.with_name(out.name + ".README.txt")]
    if WRITERS[fmt][1]:
        paths.append(out.with_name(module_name(out) + ".py"))
    return paths


def _check_out(paths: list[Path], overwrite: bool, texts: dict[Path, str]) -> None:
    """ConfigError or StorageError unless every file can be written: its folder
    exists, it is not a folder, and (unless ``overwrite``) it does not exist, or
    holds exactly the text ``texts`` gives it (the module file that a torch and
    a safetensors export of one run to one name share)."""
    out = paths[0]
    if len(set(paths)) != len(paths):
        raise ConfigError(
            f"--out {out} would be overwritten by its own module file; name it "
            f"with another suffix, such as {out.with_suffix('.pt').name}."
        )
    folder = out.parent
    if not folder.is_dir():
        raise StorageError(
            f"Cannot write {out}: the folder {folder} does not exist. Create it "
            f"or choose another --out."
        )
    for path in paths:
        if path.is_dir():
            raise ConfigError(f"--out {path} is a folder; give a file name.")
        taken = path.exists() or path.is_symlink()
        if taken and not overwrite and not _holds(path, texts.get(path)):
            raise ConfigError(
                f"{path} already exists. Choose another --out, or add --overwrite "
                f"to replace it."
            )


def _holds(path: Path, text: str | None) -> bool:
    """Whether ``path`` is a regular file holding exactly ``text``."""
    if text is None:
        return False
    try:
        return files.read_bounded(path, len(text.encode()) + 1) == text.encode()
    except OSError:
        return False


def export(
    ref: str | store.Run, fmt: str, out: str | Path, *, overwrite: bool = False
) -> list[Path]:
    """Export run ``ref`` as ``fmt`` (one of ``FORMATS``) to the file ``out``;
    returns the files written (``out``, its README, and for torch and
    safetensors the module definition).

    Raises ConfigError for an unknown format, a run that cannot be exported or
    an existing file (unless ``overwrite``), StorageError for a folder that
    cannot be written to, MissingPackage if the format's package is missing.
    Every file is written atomically; ``out`` last.
    """
    if fmt not in WRITERS:
        raise ConfigError(f"Unknown format {fmt!r}; formats: {', '.join(FORMATS)}.")
    paths = planned_files(fmt, out)
    _check_out(paths[:2], overwrite, {})  # a quick refusal, before the model loads
    to_bytes, with_module = WRITERS[fmt]
    net = network(ref)
    module = module_name(paths[0]) if with_module else None
    texts = [readme(net, fmt, paths[0], module)]
    if with_module:
        texts.append(torch_source(net, module, paths[0]))
    companions = dict(zip(paths[1:], texts, strict=True))
    _check_out(paths, overwrite, companions)
    data = to_bytes(net)  # before any file is written: a missing package stops here
    for path, content in companions.items():
        _write(path, content)
    _write(paths[0], data)
    return paths


def _write(path: Path, data: bytes | str) -> None:
    try:
        files.atomic_write(path, data)
    except OSError as err:
        raise StorageError(
            f"Cannot write {path} ({err.strerror or err}). Choose another --out in "
            f"a folder you can write to."
        ) from err
