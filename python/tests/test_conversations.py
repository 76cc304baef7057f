"""The real-data path on a tiny model: LLaVA-format conversations (JSON + image folder)
rendered by a processor's chat template, every turn's answer found, and the training command
run on the file. The tokenizer is a word-level one built here (nothing downloaded)."""
import json
import random

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlavaProcessor, PreTrainedTokenizerFast

from metacompress.models import tiny
from metacompress.models.adapters import Adapter
from metacompress.models.inputs import conversation_sample
from metacompress.tasks.synthetic import synthetic_image
from metacompress.training.data import llava_json_samples
from metacompress.training.trainer import main as train_main

WORDS = ["what", "is", "in", "the", "picture", "a", "red", "box", "where", "left", "colour",
         "it", "blue", "how", "many", "two", "three", "?", "."]
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}"
    "{% else %}ASSISTANT: {{ m['content'][0]['text'] }} </s> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)


def processor():
    vocabulary = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "USER:": 4, "ASSISTANT:": 5}
    vocabulary.update({w: 6 + i for i, w in enumerate(WORDS)})
    vocabulary["<image>"] = tiny.IMAGE_TOKEN
    model = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>",
                                        extra_special_tokens={"image_token": "<image>"})
    _, image_processor = tiny.build("tiny-llava")
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                          vision_feature_select_strategy="default", chat_template=TEMPLATE,
                          num_additional_image_tokens=1)


CONVERSATION = [
    {"from": "human", "value": "<image>\nwhat is in the picture ?"},
    {"from": "gpt", "value": "a red box ."},
    {"from": "human", "value": "where is it ?"},
    {"from": "gpt", "value": "left ."},
    {"from": "human", "value": "how many ?"},
    {"from": "gpt", "value": "two ."},
]


def test_every_turns_answer_is_found_in_a_chat_template_rendering():
    proc = processor()
    sample = conversation_sample(proc, synthetic_image(random.Random(1)), CONVERSATION)
    tokenizer = proc.tokenizer
    assert (sample.input_ids == tiny.IMAGE_TOKEN).sum() == 16
    answers = tokenizer.decode(sample.input_ids[sample.answer]).split()
    assert answers == ["a", "red", "box", ".", "</s>", "left", ".", "</s>", "two", ".", "</s>"]
    starts = torch.diff(sample.answer.int(), prepend=torch.zeros(1, dtype=torch.int)).eq(1).sum()
    assert starts == 3


def test_the_training_command_runs_on_a_conversations_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    records = []
    for index in range(4):
        synthetic_image(random.Random(index)).save(images / f"{index}.png")
        records.append({"image": f"{index}.png", "conversations": CONVERSATION})
    data = tmp_path / "conversations.json"
    data.write_text(json.dumps(records))
    proc = processor()
    samples = list(llava_json_samples(proc, data, images))
    assert len(samples) == 4 and all(s.answer.sum() == 11 for s in samples)
    # A checkpoint on disk, loaded by the command as any local model is.
    model, _ = tiny.build("tiny-llava")
    checkpoint = tmp_path / "tiny-llava"
    model.save_pretrained(checkpoint)
    proc.save_pretrained(checkpoint)
    output = tmp_path / "pmeta.safetensors"
    train_main(["--model", str(checkpoint), "--data", str(data), "--images", str(images), "--steps", "2",
                "--keep", "0.25", "--dc", "16", "--pos", "4x4", "--output", str(output)])
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert sidecar["family"] == "llava" and sidecar["steps"] == 2
    assert Adapter(model).family == "llava"
