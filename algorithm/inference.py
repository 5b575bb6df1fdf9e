"""Run the exported model with ONNX Runtime: images in, landmarks in original pixels (and confidences) out.

The first stage finds every landmark on the resized image; a shape model, when the metadata has one,
moves a landmark that cannot be where it is to another peak of its heatmap or to the skull's estimate
(`algorithm.shape`); an image whose landmarks mostly fit no skull is also read mirrored, flipped and turned,
in case it was exported so, then tilted either way, and a skull turned further than any training skull is read
in a copy turned level; a second stage looks again at a full-resolution crop about each landmark
(`algorithm.crops`) and is overruled where it leaves the skull. Every landmark ends inside its image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort

from algorithm.codec import HeatmapCodec
from algorithm.crops import refine_landmarks
from algorithm.devices import DEVICES, DeviceError, nvidia_gpu_visible
from algorithm.errors import describe
from algorithm.metadata import DEFAULT_MODEL_DIR, METADATA_FILE, MODEL_FILE, ModelError, ModelMetadata
from algorithm.preprocessing import (ResizeGeometry, is_constant, picture_box, prepare, prepare_region, strip_padding,
                                     turn_points, turned_image)
from algorithm.shape import REESTIMATED_PROBABILITY, DegenerateShape, ShapeFit, ShapeModel

logger = logging.getLogger(__name__)
Key = TypeVar("Key")  # what names one copy of an image in a search (an orientation's name, a turn in degrees)

# An image whose content is smaller than this on a side, or constant, holds nothing the model can find.
MIN_CONTENT_SIDE = 64
# The most a landmark may be trusted that had to be moved into its image.
CLAMPED_PROBABILITY = 0.1
# The first stage looks again at the frame training images would give the skull when that frame spans less
# than REFRAME_BELOW of the image's width or height (the image holds much besides the skull: a landscape
# canvas, viewer borders), or more than REFRAME_ABOVE of both (the image is cut tight about the skull). On the
# validation splits (the split run's first stage) the smaller of the frame's two shares is 0.89-1.23 for an
# unchanged image, 0.45-0.96 for a landscape or screenshot one and 1.51-1.75 for a tight crop; REFRAME_ABOVE
# lies in the gap, not fitted. One under REFRAME_SMALLEST comes from landmarks too wrong to trust.
REFRAME_BELOW = 0.85
REFRAME_ABOVE = 1.4
REFRAME_SMALLEST = 0.2
# The second look replaces the first unless it puts more than this many more landmarks off the skull. Trained on
# Hamedan and scored on ISBI, 8 of 150 second looks put more off: by 1-2 in 7 images (better in 5 of them,
# 0.3 mm on average), by 5 in one, whose frame came from a first look with 7 landmarks off and moved 15 of its 19
# landmarks 20-36 mm away.
REFRAME_TOLERANCE = 2
# A first look that finds no skull (most landmarks off a plausible one) in an image whose aspect differs from the
# model input's by more than this ratio looks again at a frame of the input's aspect, as tall as the image and
# centred across it: a viewer screenshot or landscape canvas unsqueezed. Trained on Hamedan and scored on ISBI
# viewer screenshots, 4 of 150 first looks found no skull there, and a second look at the skull's frame needs one.
CENTRED_LOOK_ASPECT = 1.1
# A look that puts at least this share of its landmarks off any plausible skull may be of a mirrored, flipped or
# turned image (`ORIENTATIONS`): the shipped model put 8-17 of 19 off on mirrored and quarter-turned copies of Hamedan
# images (a 109-117 mm MRE), 0 on every upright one.
TURNED_LOOK_SHARE = 0.25
# A look with fewer landmarks off than that share may be of a turned image too, where the landmarks that fit the skull
# are found with little confidence (the mean of their confidences under this; a sharp heatmap gives about 0.6): trained
# on ISBI alone, the first stage read three Hamedan images, mirrored, turned a quarter and flipped, as upright skulls
# with 4 of 19 landmarks off and the rest at 0.08-0.12 on average. Upright images of an unseen centre with some off go
# down to 0.13 (tight crops, negatives, tilts), and the search then finds no orientation that fits better; the shipped
# model starts it on none of its own images in any framing of the clinic-export test.
DOUBTFUL_CONFIDENCE = 0.2
# A reading that still puts `TURNED_LOOK_SHARE` or more of its landmarks off the skull after the orientation search
# may be of a skull turned too far for the model to find at all (so too far to level): the first stage looks at
# copies turned this many degrees (clockwise, then anticlockwise, on screen) about the image's centre. Trained on
# Hamedan alone, the first stage reads ISBI images tilted 15 degrees as well as upright ones, but lost 6 of 150
# tilted 25 degrees, with 10-15 of 19 landmarks off the skull.
TILT_SEARCH_DEGREES = (20.0, -20.0)


@dataclass(frozen=True)
class Orientation:
    """One way an image may have been stored, as what makes it upright: transposed or not, then its rows and its
    columns reversed or not (the seven combinations other than none are every reflection and turn of the rectangle)."""

    transposed: bool
    rows_reversed: bool
    columns_reversed: bool

    def upright(self, content: np.ndarray) -> np.ndarray:
        """The (H, W) image as given, made upright (a view)."""
        turned = content.T if self.transposed else content
        return turned[::-1 if self.rows_reversed else 1, ::-1 if self.columns_reversed else 1]

    def points_back(self, points: np.ndarray, height: int, width: int) -> np.ndarray:
        """(K, 2) points found in the upright copy to the (height, width) image as given."""
        upright_height, upright_width = (width, height) if self.transposed else (height, width)
        x = upright_width - 1 - points[:, 0] if self.columns_reversed else points[:, 0]
        y = upright_height - 1 - points[:, 1] if self.rows_reversed else points[:, 1]
        return np.stack([y, x] if self.transposed else [x, y], axis=1)


# How an image may have been exported, named as the log says it.
ORIENTATIONS = {
    "mirrored (the patient facing left)": Orientation(False, False, True),
    "turned a quarter clockwise": Orientation(True, True, False),
    "turned a quarter anticlockwise": Orientation(True, False, True),
    "upside down (turned a half)": Orientation(False, True, True),
    "flipped top to bottom (rows stored bottom-up)": Orientation(False, True, False),
    "mirrored and turned a quarter anticlockwise": Orientation(True, False, False),
    "mirrored and turned a quarter clockwise": Orientation(True, True, True),
}


def _providers_for(device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        if device == "cuda":
            raise DeviceError("--device cuda: this ONNX Runtime build has no CUDA provider (install onnxruntime-gpu)")
        return ["CPUExecutionProvider"]
    if device == "auto" and not nvidia_gpu_visible():
        return ["CPUExecutionProvider"]  # skips loading several hundred MB of CUDA libraries for nothing
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # the CUDA and cuDNN libraries that come as pip wheels
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def create_session(model_path: Path, device: str = "auto", threads: int = 0) -> ort.InferenceSession:
    """An inference session on `device` (auto: CUDA if usable, else CPU); threads=0 lets ONNX Runtime choose."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {DEVICES}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # One block planned ahead for all of a run's intermediate tensors (the memory pattern) held at peak about 40 MB
    # more for the first stage and 35 MB more for the second stage's 19 crops, at no measured gain in speed.
    options.enable_mem_pattern = False
    # Idle threads wait for work without spinning: each stage's session has its own threads, which spun after every
    # run and took the CPU from the other stage and from the numpy steps between runs (the whole process is 17-20 %
    # faster without, on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # the CUDA fallback is reported below, once and clearly
    providers = _providers_for(device)
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as error:  # ONNX Runtime's own exception types derive from Exception only
        raise ModelError(f"{model_path}: not a model ONNX Runtime can load ({describe(error)})") from None
    running = session.get_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in running:
        raise DeviceError("--device cuda: no usable GPU (the CUDA provider did not start); use --device cpu or auto")
    logger.info("ONNX Runtime providers in use: %s", ", ".join(running))
    return session


def _static_dims(value: object) -> list[int | None]:
    """An ONNX tensor shape with named or unknown dimensions as None."""
    return [dim if isinstance(dim, int) else None for dim in value.shape]


def _shape_text(dims: list[int | None]) -> str:
    return "(N, " + ", ".join("?" if dim is None else str(dim) for dim in dims) + ")"


def check_graph(session: ort.InferenceSession, codec: HeatmapCodec, num_landmarks: int, model_path: Path) -> None:
    """The metadata must describe the graph: an (N, 1, H, W) float input of the codec's size and (N, K, H/stride,
    W/stride) heatmaps, one channel per landmark name. Named dimensions are measured on a blank image."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    where = f"{model_path}: does not match its {METADATA_FILE}"
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        raise ModelError(f"{where}: the model should take one float (N, 1, H, W) input")
    expected_input = [1, codec.input_height, codec.input_width]
    input_dims = _static_dims(inputs[0])[1:]
    if any(dim is not None and dim != want for dim, want in zip(input_dims, expected_input)):
        raise ModelError(f"{where}: the model takes {_shape_text(input_dims)} inputs, the metadata says "
                         f"{_shape_text(expected_input)}")
    if len(outputs[0].shape) != 4:
        raise ModelError(f"{where}: the model should give (N, K, h, w) heatmaps")
    output_dims = _static_dims(outputs[0])[1:]
    if None in output_dims:
        blank = np.zeros((1, *expected_input), dtype=np.float32)
        try:
            output_dims = list(session.run(None, {inputs[0].name: blank})[0].shape[1:])
        except Exception as error:  # ONNX Runtime's own exception types derive from Exception only
            raise ModelError(f"{where}: the model fails on a {_shape_text(expected_input)} input "
                             f"({describe(error)})") from None
    expected_output = [num_landmarks, *codec.heatmap_shape]
    if output_dims != expected_output:
        raise ModelError(f"{where}: the model gives {_shape_text(output_dims)} heatmaps, the metadata's "
                         f"{num_landmarks} landmark names and heatmap stride {codec.stride} mean "
                         f"{_shape_text(expected_output)}")


def content_of(image: np.ndarray, geometry: ResizeGeometry) -> np.ndarray:
    """The un-padded 2D content of `image` that `geometry` (from `prepare`) measured, as a view."""
    return strip_padding(image, (geometry.content_height, geometry.content_width))


@dataclass(frozen=True)
class Detection:
    """One image's landmarks in its own pixels, (K, 2), a confidence in [0, 1] for each, (K,), what the shape
    check made of them, the height of the frame they were found in, and warnings for the log."""

    points: np.ndarray
    confidence: np.ndarray
    shape_fit: ShapeFit | None = None
    reestimated: np.ndarray | None = None  # (K,) landmarks the shape model had to estimate
    notes: tuple[str, ...] = ()
    frame_height: int | None = None  # a second look's frame, in image pixels (None: the whole content)


def off_skull(detection: Detection) -> int:
    """How many of a shape-checked detection's landmarks fit no plausible skull (all, where they form none)."""
    return len(detection.points) if detection.reestimated is None else int(detection.reestimated.sum())


def unsure(detection: Detection) -> bool:
    """Whether a shape-checked look puts `TURNED_LOOK_SHARE` or more of its landmarks off any plausible skull: no sure
    reading of the image (it may be turned, or tilted too far to read)."""
    return off_skull(detection) >= TURNED_LOOK_SHARE * len(detection.points)


def doubtful(detection: Detection) -> bool:
    """Whether a shape-checked look puts some landmarks off the skull and finds those that fit it with little
    confidence (under `DOUBTFUL_CONFIDENCE` on average): perhaps a turned image's look that happens to fit a skull."""
    if not 0 < off_skull(detection) < len(detection.points):
        return False
    return float(detection.confidence[~detection.reestimated].mean()) < DOUBTFUL_CONFIDENCE


def finds_no_skull(detection: Detection) -> bool:
    """Whether a shape-checked look has most of its landmarks off any plausible skull: no skull to frame."""
    return detection.shape_fit is None or 2 * off_skull(detection) > len(detection.points)


class LandmarkDetector:
    """The exported model (one or two stages) with the preprocessing and decoding its metadata describes."""

    def __init__(self, model_dir: Path = DEFAULT_MODEL_DIR, device: str = "auto", threads: int = 0,
                 batch_size: int = 1, decoder: str | None = None, refine: bool = True,
                 shape_check: bool = True) -> None:
        model_dir = Path(model_dir)
        model_path = model_dir / MODEL_FILE
        if not model_path.is_file():
            raise ModelError(f"{model_path}: not found")
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if threads < 0:
            raise ValueError("threads must be 0 (ONNX Runtime's choice) or more")
        self.metadata = ModelMetadata.load(model_dir)
        meta = self.metadata
        if meta.quantized:
            if device == "cuda":
                raise DeviceError(f"--device cuda: {model_dir}'s graphs are quantized to integers for the CPU "
                                  "(training.quantize), where they were scored; use --device cpu or auto")
            device = "cpu"  # the GPU would emulate the integer arithmetic in float, unlike the CPU it was scored on
        self.codec = meta.codec if decoder is None else replace(meta.codec, decoder=decoder)
        self.session = create_session(model_path, device, threads)
        check_graph(self.session, self.codec, meta.num_landmarks, model_path)
        self.input_name = self.session.get_inputs()[0].name
        self.batch_size = batch_size
        self.shape: ShapeModel | None = meta.shape if shape_check else None
        self.refinement = meta.refinement if refine else None
        if self.refinement is not None:
            refine_path = model_dir / self.refinement.model_file
            if not refine_path.is_file():
                raise ModelError(f"{refine_path}: not found (the metadata's second stage); use --no-refine to run "
                                 "the first stage alone")
            self.refine_codec = (self.refinement.codec if decoder is None
                                 else replace(self.refinement.codec, decoder=decoder))
            self.refine_session = create_session(refine_path, device, threads)
            check_graph(self.refine_session, self.refine_codec, meta.num_landmarks, refine_path)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, ResizeGeometry]:
        """Step 1: one image to the model's normalised input and the geometry that maps back."""
        return prepare(image, self.codec.input_height, self.codec.input_width, self.metadata.normalization)

    def heatmaps(self, inputs: np.ndarray) -> np.ndarray:
        """Step 2: (B, H, W) model inputs to (B, K, h, w) heatmaps with ONNX Runtime."""
        return self.session.run(None, {self.input_name: inputs[:, None].astype(np.float32)})[0]

    def decode(self, heatmaps: np.ndarray, geometries: list[ResizeGeometry]) -> list[Detection]:
        """Step 3: heatmaps to each image's landmarks in its own pixels, with the first stage's confidences,
        kept on a plausible skull when the model has a shape model."""
        points, confidence = self.codec.decode(heatmaps)
        detections = [Detection(geometry.to_original(image_points), image_confidence)
                      for geometry, image_points, image_confidence in zip(geometries, points, confidence)]
        if self.shape is None:
            return detections
        return [self.keep_plausible(detection, image_heatmaps, geometry)
                for detection, image_heatmaps, geometry in zip(detections, heatmaps, geometries)]

    def keep_plausible(self, first: Detection, heatmaps: np.ndarray, geometry: ResizeGeometry) -> Detection:
        """Step 3b: a landmark that does not fit the others takes another peak of its heatmap that does, or the
        shape model's estimate with a low probability."""
        def peaks(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            candidates, scores = self.codec.candidates(heatmaps[landmarks], self.shape.candidates)
            return geometry.to_original(candidates), scores

        try:
            points, confidence, fit, reestimated = self.shape.correct(first.points, first.confidence, peaks)
        except DegenerateShape as error:
            return replace(first, confidence=np.minimum(first.confidence, REESTIMATED_PROBABILITY),
                           notes=(f"the landmarks form no skull ({error}): probability <= {REESTIMATED_PROBABILITY}",))
        names = [self.metadata.landmark_names[k] for k in np.flatnonzero(reestimated)]
        notes = (f"{len(names)} landmark(s) fit no plausible skull ({', '.join(names)}): estimated from the "
                 f"others, probability <= {REESTIMATED_PROBABILITY}",) if names else ()
        if 2 * len(names) > len(points):
            notes = (f"{len(names)} of {len(points)} landmarks fit no plausible skull: is this a lateral "
                     f"cephalogram? They are estimated from the rest, probability <= {REESTIMATED_PROBABILITY}",)
        return Detection(points, confidence, fit, reestimated, notes)

    def look_at(self, image: np.ndarray, geometry: ResizeGeometry, left: float, top: float, width: float,
                height: float) -> Detection:
        """The first stage's look at one frame of the image's content (reaching past it, where the frame does)."""
        content = content_of(image, geometry)
        model_input, frame = prepare_region(content, int(np.floor(left)), int(np.floor(top)), int(np.ceil(width)),
                                            int(np.ceil(height)), self.codec.input_height, self.codec.input_width,
                                            self.metadata.normalization)
        return replace(self.decode(self.heatmaps(model_input[None]), [frame])[0], frame_height=frame.content_height)

    def centred_look(self, image: np.ndarray, geometry: ResizeGeometry, first: Detection) -> Detection:
        """Step 3c, where the first look found no skull: squeezed into the model's input, a skull in a much wider (or
        narrower) image may be one the model cannot read, so the first stage looks at a frame of the input's aspect,
        as tall as the image and centred across it, and that look is kept if it puts fewer landmarks off the skull."""
        height = geometry.content_height
        width = height * self.codec.input_width / self.codec.input_height
        if abs(np.log(width / geometry.content_width)) <= np.log(CENTRED_LOOK_ASPECT):
            return first
        second = self.look_at(image, geometry, (geometry.content_width - width) / 2, 0, width, height)
        if off_skull(second) >= off_skull(first):
            return first
        return replace(second, notes=second.notes + (
            f"the first look put {off_skull(first)} of {len(first.points)} landmarks off the skull: a look at the "
            f"image's centre at the model's aspect put {off_skull(second)}, and is kept",))

    def reframe(self, image: np.ndarray, geometry: ResizeGeometry, first: Detection) -> Detection:
        """Step 3c: where the skull fills much less of its image than in training images (a landscape canvas,
        viewer borders) or much more (a crop tight about it), the first stage looks again at the frame training
        would have given it, so that it sees the skull at the scale and aspect it learned. The frame comes from
        the first look's skull, so a first look with most landmarks off a plausible skull gives none (it may look
        at the image's centre first, `centred_look`); where the second look puts clearly more landmarks off a
        plausible skull, that frame was wrong and the first look stays."""
        if self.shape is None or self.shape.frame is None:
            return first
        found_at_centre: tuple[str, ...] = ()
        if finds_no_skull(first):
            centred = self.centred_look(image, geometry, first)
            if centred is not first:
                found_at_centre, first = centred.notes[-1:], centred
            if finds_no_skull(first):
                return first
        left, top, width, height = self.shape.frame_box(first.shape_fit)
        spans = np.array([width / geometry.content_width, height / geometry.content_height])
        if not (REFRAME_SMALLEST <= spans.min() < REFRAME_BELOW or spans.min() > REFRAME_ABOVE):
            return first
        second = self.look_at(image, geometry, left, top, width, height)
        if off_skull(second) <= off_skull(first) + REFRAME_TOLERANCE:
            return replace(second, notes=found_at_centre + second.notes)
        return replace(first, notes=first.notes + (
            f"a second look at the skull's usual frame put {off_skull(second)} landmark(s) off the skull against "
            f"{off_skull(first)}: the first look is kept",))

    def upright(self, image: np.ndarray, geometry: ResizeGeometry, first: Detection, as_given: Detection) -> Detection:
        """Steps 3d and 4: where the look at the image as given, or the look kept after re-framing (`first`), puts many
        landmarks off any plausible skull, the image may be mirrored, flipped or turned (`ORIENTATIONS`), so the first
        stage looks at it made upright each way (stopping at a look with none off); the orientation with the fewest
        landmarks off the skull is kept if it at least halves those of `first`, re-framed and refined there as an
        upright image would be, and its landmarks mapped back (its shape fit and frame, which hold in the upright copy
        only, are dropped). Otherwise `first` is refined as it is. Either is first looked at in tilted copies where it
        still puts many landmarks off the skull (`straighten`), and levelled where its skull is turned beyond training's
        (`level`). Where the orientation kept still puts many off, the image as given is read so too, and the reading
        with fewer landmarks off the skull is kept: a skull tilted beyond reading may look more like some orientation
        than like itself.
        Both looks count, as re-framing a turned image can find a skull that fits in part: one of 110 Hamedan images
        turned a quarter had 8 landmarks off the skull as given, 4 after re-framing and none upright. A look with a few
        landmarks off, on a skull turned beyond any training skull, is searched too: two of those images mirrored and
        turned a quarter anticlockwise put 4 of 19 off, on skulls 25-29 degrees beyond training's, and none upright;
        so is one whose landmarks on the skull are found with little confidence (`doubtful`)."""
        if self.shape is None or not self.may_be_turned(first, as_given):
            return self.straighten(image, geometry, first)
        content = content_of(image, geometry)
        name, look, turned, turned_geometry = self.best_look(
            (name, np.ascontiguousarray(orientation.upright(content))) for name, orientation in ORIENTATIONS.items())
        if 2 * off_skull(look) > off_skull(first):
            return self.straighten(image, geometry, first)
        refined = self.straighten(turned, turned_geometry, self.reframe(turned, turned_geometry, look))
        if unsure(look):  # tilted as given, perhaps
            read_as_given = self.straighten(image, geometry, first)
            if off_skull(read_as_given) < off_skull(refined):
                return replace(read_as_given, notes=read_as_given.notes + (
                    f"upright, the image looked {name} with {off_skull(refined)} of {len(look.points)} landmarks off "
                    f"the skull; as given, {off_skull(read_as_given)}: it is read as given",))
        points = ORIENTATIONS[name].points_back(refined.points, *content.shape)
        return replace(refined, points=points, shape_fit=None, frame_height=None, notes=refined.notes + (
            f"the image looks {name}: upright, {off_skull(look)} of {len(points)} landmarks fit no plausible skull "
            f"against {off_skull(first)} as given, so they were found in the upright copy",))

    def _first_look(self, image: np.ndarray) -> tuple[Detection, ResizeGeometry]:
        """Steps 1-3b on one image alone: the first stage's shape-checked look at it, and its geometry."""
        model_input, geometry = self.prepare(image)
        return self._first_looks([(image, model_input, geometry)])[0], geometry

    def _first_looks(self, prepared: list[tuple[np.ndarray, np.ndarray, ResizeGeometry]]) -> list[Detection]:
        """Steps 2-3b on prepared (image, model input, geometry) triples together: the first stage's shape-checked
        looks."""
        if not prepared:
            return []
        _, inputs, geometries = zip(*prepared)
        return self.decode(self.heatmaps(np.stack(inputs)), list(geometries))

    def best_look(self, copies: Iterable[tuple[Key, np.ndarray]]) -> tuple[Key, Detection, np.ndarray, ResizeGeometry]:
        """The first stage's look at each (key, image) copy in turn, stopping at one that puts no landmark off the
        skull: the look with the fewest off (the first of equals), with its key, image and geometry."""
        looks = []
        for key, copy in copies:
            look, copy_geometry = self._first_look(copy)
            looks.append((key, look, copy, copy_geometry))
            if off_skull(looks[-1][1]) == 0:
                break  # none can do better, and min() keeps the first of equals
        return min(looks, key=lambda candidate: off_skull(candidate[1]))

    def may_be_turned(self, first: Detection, as_given: Detection) -> bool:
        """Whether the image may be mirrored, flipped or turned: a look puts at least `TURNED_LOOK_SHARE` of the
        landmarks off any plausible skull, or `first` puts some off a skull turned beyond any training skull, or finds
        the rest with little confidence (`doubtful`)."""
        if unsure(first) or unsure(as_given) or doubtful(first):
            return True
        return off_skull(first) > 0 and self.levelling_turn(first) != 0

    def straighten(self, image: np.ndarray, geometry: ResizeGeometry, first: Detection) -> Detection:
        """Step 3e: where `first`, the reading kept so far, still puts `TURNED_LOOK_SHARE` or more of its landmarks
        off any plausible skull, the skull may be tilted too far for the model to find, so the first stage looks at
        copies of the image turned `TILT_SEARCH_DEGREES` about its centre (stopping at a look with none off); the
        one with the fewest landmarks off is kept if it at least halves those of `first` and the skull it finds,
        turned back, lies beyond the training skulls' angles in the image as given (otherwise the copy found an
        upright skull tilted: a different look, not a tilted skull made upright), then re-framed, levelled and
        refined there, and its landmarks turned back (its shape fit, which holds in the copy only, is dropped).
        Otherwise, or where the model records no training angles, `first` is levelled and refined as it is
        (`level`)."""
        if self.shape is None or self.shape.angles is None or not unsure(first):
            return self.level(image, geometry, first)
        content = content_of(image, geometry)
        centre = (np.array(content.shape[::-1], dtype=np.float64) - 1) / 2
        degrees, look, turned, turned_geometry = self.best_look(
            (degrees, turned_image(content, centre, degrees)) for degrees in TILT_SEARCH_DEGREES)
        # turning an image by t degrees turns its skull by t: the copy's skull, turned back, is the image's
        tilted_as_given = look.shape_fit is not None and self.shape.beyond_angles(look.shape_fit.degrees - degrees)
        if 2 * off_skull(look) > off_skull(first) or not tilted_as_given:
            return self.level(image, geometry, first)
        refined = self.level(turned, turned_geometry, self.reframe(turned, turned_geometry, look))
        direction = "clockwise" if degrees > 0 else "anticlockwise"
        return replace(refined, points=turn_points(refined.points, centre, -degrees), shape_fit=None,
                       notes=refined.notes + (
                           f"{off_skull(first)} of {len(first.points)} landmarks fit no plausible skull as it stands: "
                           f"a copy turned {abs(degrees):.0f} degrees {direction} put {off_skull(look)} off, so they "
                           "were found there",))

    def levelling_turn(self, detection: Detection) -> float:
        """Degrees to turn the image by to bring the skull `detection` found to the training skulls' median angle; 0
        where it lies within their range or where it finds no skull."""
        return 0.0 if finds_no_skull(detection) else self.shape.levelling_turn(detection.shape_fit)

    def level(self, image: np.ndarray, geometry: ResizeGeometry, first: Detection) -> Detection:
        """Steps 3f and 4: where `first` finds a skull turned further than any training skull (a film scanned askew,
        a head tipped in the cephalostat), the first stage looks again at a copy of the image turned about the skull's
        centre to the training skulls' median angle, re-framed as usual; the copy's look is kept if it puts no more
        landmarks off a plausible skull, refined there, and its landmarks turned back (its shape fit, which holds in the
        copy only, is dropped; its frame's height, a length, stays). Otherwise `first` is refined as it is."""
        if self.shape is None or not (turn := self.levelling_turn(first)):
            return self.refine(image, geometry, first)
        centre = first.shape_fit.centre_xy
        levelled = turned_image(content_of(image, geometry), centre, turn)
        look, levelled_geometry = self._first_look(levelled)
        look = self.reframe(levelled, levelled_geometry, look)
        tilt = (f"the skull is turned {abs(turn):.0f} degrees {'anticlockwise' if turn > 0 else 'clockwise'} from "
                "the training skulls' median pose, beyond any of theirs")
        if off_skull(look) > off_skull(first):
            refined = self.refine(image, geometry, first)
            return replace(refined, notes=refined.notes + (
                f"{tilt}; a copy turned level put {off_skull(look)} landmark(s) off the skull against "
                f"{off_skull(first)}: the image is read as it is",))
        refined = self.refine(levelled, levelled_geometry, look)
        return replace(refined, points=turn_points(refined.points, centre, -turn), shape_fit=None,
                       notes=refined.notes + (f"{tilt}: its landmarks were found in a copy turned level about the "
                                              "skull's centre",))

    def refine(self, image: np.ndarray, geometry: ResizeGeometry, first: Detection) -> Detection:
        """Step 4 (with a second stage): look again at a full-resolution crop about each landmark; where the
        refined landmark leaves the plausible skull that the first one was on, the first one stays."""
        if self.refinement is None:
            return first
        content = content_of(image, geometry)
        refine_input = self.refine_session.get_inputs()[0].name

        def heatmaps_of(crops: np.ndarray) -> np.ndarray:
            return self.refine_session.run(None, {refine_input: crops[:, None]})[0]

        points, confidence = refine_landmarks(content, first.points, self.refinement.crops, self.refine_codec,
                                              heatmaps_of, first.frame_height)
        if first.shape_fit is None:
            return replace(first, points=points, confidence=confidence)
        z_refined = self.shape.z_of(first.shape_fit, points)
        leaves_skull = (z_refined > self.shape.outlier_z) & (z_refined > self.shape.z_of(first.shape_fit, first.points))
        points = np.where(leaves_skull[:, None], first.points, points)
        trusted = self.shape.trust(confidence, z_refined, first.reestimated)
        confidence = np.where(leaves_skull, first.confidence, trusted)
        return replace(first, points=points, confidence=confidence)

    def finish(self, image: np.ndarray, geometry: ResizeGeometry, detection: Detection) -> Detection:
        """Step 5: every landmark inside the image's content; an image with nothing to find (constant, or too
        small for the model) keeps its landmarks, each with probability 0, and says so."""
        limit = np.array([geometry.content_width - 1, geometry.content_height - 1], dtype=np.float64)
        points = np.clip(detection.points, 0, limit)
        clamped = (points != detection.points).any(axis=1)
        confidence = np.where(clamped, np.minimum(detection.confidence, CLAMPED_PROBABILITY), detection.confidence)
        notes = detection.notes
        content = content_of(image, geometry)
        constant = is_constant(content)
        if constant or min(geometry.content_height, geometry.content_width) < MIN_CONTENT_SIDE:
            what = "a constant image" if constant else (
                f"{geometry.content_width} x {geometry.content_height} pixels, under {MIN_CONTENT_SIDE} on a side")
            notes = (f"nothing to find ({what}): landmarks written with probability 0",)
            confidence = np.zeros_like(confidence)
        elif clamped.any():
            notes += (f"{int(clamped.sum())} landmark(s) fell outside the image and were moved to its edge "
                      f"(probability <= {CLAMPED_PROBABILITY})",)
        return replace(detection, points=points, confidence=np.clip(confidence, 0.0, 1.0), notes=notes)

    def _read(self, image: np.ndarray, geometry: ResizeGeometry, as_given: Detection) -> Detection:
        """Steps 3c-5 after the first look at an image (`as_given`): re-framed, made upright, levelled, refined and
        kept inside the image."""
        detection = self.reframe(image, geometry, as_given)
        return self.finish(image, geometry, self.upright(image, geometry, detection, as_given))

    def bordered_picture(self, image: np.ndarray, geometry: ResizeGeometry) -> tuple[int, int, int, int] | None:
        """Step 3c's question, asked first: is the image a picture inside a black border (a viewer's window with text
        on it, a canvas)? The picture's (left, top, right, bottom) in the content's pixels if so, else None. Without a
        shape model, which compares the picture's reading with the whole image's, the answer is None."""
        if self.shape is None:
            return None
        content = content_of(image, geometry)
        box = picture_box(content)
        return None if (box[2] - box[0], box[3] - box[1]) == content.shape[::-1] else box

    def in_picture(self, image: np.ndarray, geometry: ResizeGeometry, box: tuple[int, int, int, int]) -> Detection:
        """Steps 1-5 for a picture inside a black border (`box`): the picture is read as an image of its own, since
        the border is no part of the skull's frame (a tight crop in a viewer screenshot was read as a tight crop with
        black about it: the shipped model, its own 260 training images so framed, 23 landmarks beyond 10 mm, none as
        the crop alone). Where the picture's reading puts landmarks off the skull, the whole image is read too, and
        the picture's reading is kept unless it puts more off: air as dark as a border might have been taken for one.
        A picture read with none off is kept without looking at the whole image, whose reading could not put fewer
        off (and a screenshot read whole takes the orientation and tilt searches)."""
        left, top, right, bottom = box
        picture = content_of(image, geometry)[top:bottom, left:right]
        look, picture_geometry = self._first_look(picture)
        inside = self._read(picture, picture_geometry, look)
        if off_skull(inside) > 0:
            reading = self._read(image, geometry, self._first_look(image)[0])
            if off_skull(inside) > off_skull(reading):
                return replace(reading, notes=reading.notes + (
                    f"the picture inside the image's black border put {off_skull(inside)} landmark(s) off the skull "
                    f"against {off_skull(reading)}: the whole image is read",))
        return replace(inside, points=inside.points + [left, top], shape_fit=None, notes=inside.notes + (
            f"the image is a {right - left} x {bottom - top} picture inside a black border (a viewer's window or a "
            "canvas): the picture is read",))

    def predict(self, images: Iterable[np.ndarray]) -> Iterator[Detection]:
        """Each image ((H, W) or (H, W, C), padded or not) to its landmarks in its own pixels and their confidences.
        The first stage looks at a batch's images together, except at those inside a black border, whose picture is
        read instead (`in_picture`)."""
        prepared = ((image, *self.prepare(image)) for image in images)
        while batch := list(islice(prepared, self.batch_size)):
            boxes = [self.bordered_picture(image, geometry) for image, _, geometry in batch]
            looks = iter(self._first_looks([item for item, box in zip(batch, boxes) if box is None]))
            for (image, _, geometry), box in zip(batch, boxes):
                if box is None:
                    yield self._read(image, geometry, next(looks))
                else:
                    yield self.in_picture(image, geometry, box)
