"""The model's input contract, written once: what every digitpi model takes and every picture becomes.

A 28x28 grey image, white ink on black, framed as MNIST frames its digits (the ink's longer side
scaled to 20 px, its centre of mass at (14, 14)), given to the model as float32 `pixel / 255` in a
(N, 1, 28, 28) batch; out come 10 logits. `data` checks the IDX files against it, `preprocess`
frames pictures by it, `train.to_float` is the torch twin of `to_model_input`, `export` writes
`describe()` into the model card and the ONNX metadata, and `runtime` reads it back from there.

numpy only: the Raspberry Pi side imports this.
"""

from __future__ import annotations

import numpy as np

from digitpi import UserError

IMAGE_SIZE = 28  # the model's input field, px a side
NUM_CLASSES = 10  # logits out: one per digit
BOX_SIZE = 20  # the longer side of the ink inside the field, px (as NIST/MNIST did)
CENTRE = 14.0  # MNIST centres of mass sit at (14, 14) in pixel-index coordinates (measured: 13.99, 14.01)
WHITE = 255  # the uint8 value of full-strength ink
PIXEL_SCALE = 1 / WHITE  # models see pixel * PIXEL_SCALE: ink 1.0, background 0.0
SHAPE = (1, IMAGE_SIZE, IMAGE_SIZE)  # one image as the model takes it: a single grey channel
POLARITY = "white ink (1.0) on black (0.0)"
FRAMING = (f"MNIST framing: the digit scaled to fit a {BOX_SIZE}x{BOX_SIZE} box, centred by its centre of mass "
           f"in a {IMAGE_SIZE}x{IMAGE_SIZE} image")
FORMULA = f"x = pixel / {WHITE} for uint8 pixels, shape (N, {', '.join(map(str, SHAPE))})"


def describe(input_name: str) -> dict:
    """The input as the model card (`input`) and the ONNX metadata (`digitpi.input`) state it."""
    return {"name": input_name, "shape": [None, *SHAPE], "dtype": "float32", "scale": PIXEL_SCALE,
            "polarity": POLARITY, "framing": FRAMING, "formula": FORMULA}


def to_model_input(images: np.ndarray, scale: float = PIXEL_SCALE, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """uint8 (or integer) pixels 0..255, or floats already in [0, 1], as float32 (N, *shape).

    One (28, 28) image or a batch (N, 28, 28) is accepted. The runtime passes the scale and shape
    its model card states; everyone else takes this module's.
    """
    x = np.asarray(images)
    side = shape[-2:]
    if x.shape[-2:] != side or x.ndim not in (2, 3, 4) or (x.ndim == 4 and x.shape[1] != 1):
        raise UserError(f"expected images of shape (N, {side[0]}, {side[1]}) or ({side[0]}, {side[1]}), "
                        f"got {x.shape}")
    x = x.reshape(-1, *shape)
    if len(x) == 0:
        raise UserError("no images to predict")
    if x.dtype.kind in "ui":
        if x.min() < 0 or x.max() > WHITE:
            raise UserError(f"integer pixels must be in 0..{WHITE}")
        return x.astype(np.float32) * np.float32(scale)
    if x.dtype.kind == "f":
        if not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise UserError(f"float pixels must be in [0, 1] (divide 0..{WHITE} pixels by {WHITE}, or pass uint8)")
        return x.astype(np.float32, copy=False)
    raise UserError(f"images must be uint8 or float arrays, got dtype {x.dtype}")
