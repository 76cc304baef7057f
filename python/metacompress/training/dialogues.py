"""Multi-turn training dialogues from single-question datasets, as the paper builds them:
questions about the same image grouped into dialogues of `--turns` turns (GQA
train-balanced: 3), written as LLaVA-format conversations.

    python -m metacompress.dialogues --gqa train_balanced_questions.json --turns 3 \\
        --output gqa_dialogues.json
    python -m metacompress.dialogues --vqa v2_OpenEnded_mscoco_train2014_questions.json \\
        --vqa-answers v2_mscoco_train2014_annotations.json --output vqa_dialogues.json
"""
from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict


def group(questions: list[tuple[str, str, str]], turns: int, limit: int | None, seed: int) -> list[dict]:
    """`(image, question, answer)` triples into conversations of `turns` turns per image (the
    last, shorter group of an image kept if it has at least one turn)."""
    by_image = defaultdict(list)
    for image, question, answer in questions:
        by_image[image].append((question, answer))
    rng = random.Random(seed)
    dialogues = []
    for image in sorted(by_image):
        items = by_image[image]
        rng.shuffle(items)
        for start in range(0, len(items), turns):
            conversation = []
            for index, (question, answer) in enumerate(items[start:start + turns]):
                prefix = "<image>\n" if index == 0 else ""
                conversation.append({"from": "human", "value": prefix + question})
                conversation.append({"from": "gpt", "value": answer})
            dialogues.append({"image": image, "conversations": conversation})
    rng.shuffle(dialogues)
    return dialogues[:limit]


def gqa_questions(path: str) -> list[tuple[str, str, str]]:
    """GQA's `{id: {"imageId", "question", "answer", ...}}` file."""
    data = json.load(open(path))
    return [(f"{q['imageId']}.jpg", q["question"], q["answer"]) for q in data.values()]


def vqa_questions(questions_path: str, answers_path: str) -> list[tuple[str, str, str]]:
    """VQA-v2's question and annotation files (the most common answer; COCO file names)."""
    questions = json.load(open(questions_path))["questions"]
    answers = {a["question_id"]: a["multiple_choice_answer"] for a in json.load(open(answers_path))["annotations"]}
    split = "train2014" if "train" in questions_path else "val2014"
    return [(f"COCO_{split}_{q['image_id']:012d}.jpg", q["question"], answers[q["question_id"]])
            for q in questions if q["question_id"] in answers]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m metacompress.dialogues")
    parser.add_argument("--gqa", help="GQA questions JSON")
    parser.add_argument("--vqa", help="VQA-v2 questions JSON (with --vqa-answers)")
    parser.add_argument("--vqa-answers", help="VQA-v2 annotations JSON")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--limit", type=int, help="most dialogues to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    if bool(args.gqa) == bool(args.vqa):
        raise SystemExit("give one of --gqa or --vqa")
    if args.vqa and not args.vqa_answers:
        raise SystemExit("--vqa needs --vqa-answers")
    if args.turns < 1:
        raise SystemExit(f"--turns {args.turns}: expected at least 1")
    questions = gqa_questions(args.gqa) if args.gqa else vqa_questions(args.vqa, args.vqa_answers)
    dialogues = group(questions, args.turns, args.limit, args.seed)
    json.dump(dialogues, open(args.output, "w"), indent=1)
    print(f"wrote {len(dialogues)} dialogues of up to {args.turns} turns to {args.output}")
