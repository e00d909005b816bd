"""Captions for curated clips: an image captioner on keyframes, merging of caption sources, and
the motion score appended to the caption.

Goku captions a clip by running an image(-to-text) captioner on its keyframes rather than a
video model on every frame: a keyframe carries the scene, and one image per clip keeps captioning
cheap enough for millions of clips. Clips often arrive with captions of their own (alt text, an
earlier captioner), so `merge_captions` picks or joins them in a configured priority order, and
`append_motion` writes the clip's motion score into the caption so that the model can be asked for
more or less motion at sampling time.

The captioner is any image-to-text model transformers can load from a LOCAL folder (nothing is
downloaded): an `AutoModelForImageTextToText` model (BLIP, GIT, Florence-style, chat VLMs), an
`AutoModelForVision2Seq` one on transformers versions that still have it, or a
`VisionEncoderDecoderModel` (ViT encoder + text decoder, with an image processor and a tokenizer
saved beside it). Generation is greedy so that the same clip always gets the same caption, which
keeps curation reruns reproducible.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

Frames = Union[np.ndarray, Sequence[np.ndarray]]

EXISTING = "existing"  # the source name that means record["caption"]
STRATEGIES = ("first", "join")
DEFAULT_CHAT_PROMPT = "Describe this image in one sentence."


def _check_model_dir(model_dir: str, field: str) -> str:
    path = os.fspath(model_dir)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{field}: {path} is not a model folder (no config.json in it)")
    return path


def _sentence_key(text: str) -> str:
    # Two captions are the same sentence when they differ only in case, spacing or a final stop.
    return " ".join(text.strip().rstrip(".!?").split()).lower()


def _as_sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _join_sentences(texts: Sequence[str]) -> str:
    """Unique non-empty texts, in order, as sentences: "A. B."; duplicates compared case-blind."""
    seen, out = set(), []
    for text in texts:
        key = _sentence_key(text)
        if key and key not in seen:
            seen.add(key)
            out.append(_as_sentence(text))
    return " ".join(out)


def _keyframes(frames: Frames) -> list[np.ndarray]:
    """The images to caption: the middle frame of a (T, H, W, 3) clip, an (H, W, 3) image as is,
    or each entry of a list (an entry that is itself a clip gives its middle frame)."""
    if isinstance(frames, np.ndarray):
        items, listed = [frames], False
    elif isinstance(frames, (list, tuple)):
        items, listed = list(frames), True
        if not items:
            raise ValueError("frames: empty list of keyframes")
    else:
        raise ValueError(f"frames: expected a uint8 array or a list of them, got "
                         f"{type(frames).__name__}")
    out = []
    for i, item in enumerate(items):
        where = f"frames[{i}]" if listed else "frames"
        if not isinstance(item, np.ndarray) or item.dtype != np.uint8:
            raise ValueError(f"{where}: expected a uint8 RGB array")
        if item.ndim == 4:
            if item.shape[0] == 0:
                raise ValueError(f"{where}: clip has no frames")
            item = item[item.shape[0] // 2]  # the middle keyframe: away from cuts at either end
        if item.ndim != 3 or item.shape[-1] != 3 or item.shape[0] == 0 or item.shape[1] == 0:
            raise ValueError(f"{where}: expected shape (T, H, W, 3) or (H, W, 3), "
                             f"got {tuple(item.shape)}")
        out.append(np.ascontiguousarray(item))
    return out


def _load_model(model_dir: str):
    """The first of the image-to-text auto classes that accepts the folder's config."""
    import transformers

    names = ["AutoModelForImageTextToText", "AutoModelForVision2Seq", "VisionEncoderDecoderModel"]
    errors = []
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is None:  # AutoModelForVision2Seq is gone from transformers 5
            continue
        try:
            return cls.from_pretrained(model_dir, local_files_only=True)
        except (ValueError, KeyError, OSError, TypeError) as e:
            errors.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    raise ValueError(f"model_dir: {model_dir} holds no image-to-text model transformers can load "
                     f"({'; '.join(errors)})")


class Captioner:
    """Greedy image captioning of keyframes with a locally stored transformers model.

    Built by `build_captioner`. `caption(frames)` captions the middle frame of a (T, H, W, 3)
    uint8 clip, or an (H, W, 3) image, or each of a list of keyframes (unique sentences joined).
    """

    def __init__(self, model, processor=None, image_processor=None, tokenizer=None,
                 device: str = "cpu", max_new_tokens: int = 30, prompt: Optional[str] = None):
        self.model = model
        self.processor = processor  # None for a VisionEncoderDecoderModel
        self.image_processor = image_processor
        self.tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer",
                                                                         processor)
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt

    def _dtype(self):
        return next(self.model.parameters()).dtype

    def _inputs_vision_encoder_decoder(self, image: np.ndarray) -> dict[str, Any]:
        pixels = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        inputs = {"pixel_values": pixels.to(self.device, self._dtype())}
        if self.prompt:
            # The prompt is a forced start of the decoded text; it is cut off again in `_decode`.
            import torch

            start = self.model.generation_config.decoder_start_token_id
            if start is None:
                start = self.model.config.decoder_start_token_id
            ids = self.tokenizer(self.prompt, add_special_tokens=False)["input_ids"]
            inputs["decoder_input_ids"] = torch.tensor([[start, *ids]], device=self.device)
        return inputs

    def _inputs_processor(self, image: np.ndarray) -> dict[str, Any]:
        from PIL import Image

        picture = Image.fromarray(image)
        if getattr(self.processor, "chat_template", None):
            # Chat VLMs need their image placeholder tokens, which only the template knows.
            messages = [{"role": "user", "content": [
                {"type": "image"}, {"type": "text", "text": self.prompt or DEFAULT_CHAT_PROMPT}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            batch = self.processor(images=picture, text=text, return_tensors="pt")
        elif self.prompt:
            batch = self.processor(images=picture, text=self.prompt, return_tensors="pt")
        else:
            batch = self.processor(images=picture, return_tensors="pt")
        inputs = {}
        for key, value in batch.items():
            if hasattr(value, "to"):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self._dtype())
            inputs[key] = value
        return inputs

    def _caption_image(self, image: np.ndarray) -> str:
        import torch

        if self.processor is None:
            inputs = self._inputs_vision_encoder_decoder(image)
            prefix = inputs.get("decoder_input_ids")
        else:
            inputs = self._inputs_processor(image)
            prefix = inputs.get("input_ids")
        with torch.no_grad():
            out = self.model.generate(**inputs, do_sample=False, num_beams=1,
                                      max_new_tokens=self.max_new_tokens)
        ids = out[0]
        # Decoder-only models (and a forced decoder prompt) echo the prompt before the caption.
        if prefix is not None and ids.shape[0] >= prefix.shape[1] and \
                torch.equal(ids[:prefix.shape[1]].cpu(), prefix[0].cpu()):
            ids = ids[prefix.shape[1]:]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return " ".join(text.split())

    def caption(self, frames: Frames) -> str:
        """The caption of a clip's middle keyframe, or the unique sentences of each keyframe's
        caption joined ("A. B.") for a list of keyframes; "" when the model says nothing."""
        images = _keyframes(frames)
        if isinstance(frames, np.ndarray):
            return self._caption_image(images[0])
        return _join_sentences([self._caption_image(image) for image in images])


def build_captioner(model_dir: str, device: str = "cpu", max_new_tokens: int = 30,
                    prompt: Optional[str] = None) -> Captioner:
    """A `Captioner` over the image-to-text model stored in the local folder `model_dir`."""
    model_dir = _check_model_dir(model_dir, "model_dir")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be a positive integer, got {max_new_tokens!r}")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"prompt: must be a string or None, got {type(prompt).__name__}")
    import transformers

    model = _load_model(model_dir).to(device).eval()
    if model.config.model_type == "vision-encoder-decoder":
        # Saved as an image processor plus a tokenizer; AutoProcessor has no class joining them.
        image_processor = transformers.AutoImageProcessor.from_pretrained(
            model_dir, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        return Captioner(model, None, image_processor, tokenizer, device, max_new_tokens, prompt)
    processor = transformers.AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    return Captioner(model, processor, device=device, max_new_tokens=max_new_tokens, prompt=prompt)


def _caption_field(record: Mapping[str, Any], name: str) -> str:
    if name == EXISTING:
        value = record.get("caption")
        field = "caption"
    else:
        captions = record.get("captions") or {}
        if not isinstance(captions, Mapping):
            raise ValueError(f"record {record.get('id')!r}: captions must be a dict of "
                             f"source -> text")
        value = captions.get(name)
        field = f"captions.{name}"
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"record {record.get('id')!r}: {field} must be a string, "
                         f"got {type(value).__name__}")
    return value.strip()


def merge_captions(record: Mapping[str, Any], sources: Sequence[str],
                   strategy: str = "first") -> str:
    """One caption from the record's caption sources, in the priority order of `sources`
    (names among record["captions"] keys, or "existing" for record["caption"]).

    "first": the first non-empty one. "join": the unique non-empty ones as sentences, "A. B.",
    duplicates compared case-insensitively. "" when the record has none (the caller drops it
    with reason "no caption"). A source a record lacks is skipped: sources differ per record.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if isinstance(sources, str) or not sources or \
            not all(isinstance(s, str) and s for s in sources):
        raise ValueError(f"sources: must be a non-empty list of source names, got {sources!r}")
    texts = [_caption_field(record, name) for name in sources]
    if strategy == "first":
        return next((t for t in texts if t), "")
    return _join_sentences(texts)


def append_motion(caption: str, motion: Optional[float],
                  template: str = "{caption}, motion score {motion:.1f}") -> str:
    """The caption with the clip's motion score written in (Goku conditions on it); unchanged
    for no score, and "" stays "" so that a record without a caption is still dropped."""
    if motion is None or not caption.strip():
        return caption
    if isinstance(motion, bool) or not isinstance(motion, (int, float)) or \
            not math.isfinite(motion):
        raise ValueError(f"motion: must be a finite number or None, got {motion!r}")
    # A sentence stop before the appended clause would read "a cat., motion score 3.0".
    text = re.sub(r"[.\s]+$", "", caption)
    try:
        return template.format(caption=text, motion=float(motion))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"template: cannot format {template!r} with caption and motion ({e})")
