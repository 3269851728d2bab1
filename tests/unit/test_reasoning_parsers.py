"""Reasoning parsers on real DeepSeek-R1 and Qwen3 outputs: what becomes reasoning_content
and what content, whole and streamed in pieces split at every character."""

from __future__ import annotations

import pytest

from deployments.reasoning_parsers import (
    REASONING_PARSERS,
    ReasoningStep,
    make_reasoning_parser,
)

R1_PROMPT = "<｜begin▁of▁sentence｜><｜User｜>What is 17 * 23?<｜Assistant｜><think>\n"
R1_OLD_PROMPT = "<｜begin▁of▁sentence｜><｜User｜>What is 17 * 23?<｜Assistant｜>"
QWEN3_PROMPT = "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<|im_start|>assistant\n"
QWEN3_NO_THINK_PROMPT = QWEN3_PROMPT + "<think>\n\n</think>\n\n"
QWEN3_OPEN_THINK_PROMPT = QWEN3_PROMPT + "<think>\n"  # Qwen3-Thinking-2507, Qwen3.5
QWEN3_MULTI_TURN_PROMPT = (  # an earlier turn's reasoning is kept in the prompt; the new turn opens none
    "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<think>\nI should call the tool.\n"
    "</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
    "<|im_end|>\n<|im_start|>user\n<tool_response>\n18C, sunny\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
)

R1_REASONING = "Okay, so I need to multiply 17 by 23. Let me break it down: 17 * 20 = 340, 17 * 3 = 51.\n"
R1_ANSWER = "\n\n17 × 23 = **391**."
QWEN3_REASONING = "\nOkay, the user wants 17 * 23. 17 * 23 = 391. Wait, let me check <think> tags aren't needed.\n"
QWEN3_ANSWER = "\n\nThe answer is 391."

CASES = [
    # (parser, prompt, output, reasoning, content)
    pytest.param("deepseek_r1", R1_PROMPT, R1_REASONING + "</think>" + R1_ANSWER, R1_REASONING, R1_ANSWER,
                 id="r1-think-in-prompt"),
    pytest.param("deepseek_r1", R1_OLD_PROMPT, "<think>\n" + R1_REASONING + "</think>" + R1_ANSWER,
                 "\n" + R1_REASONING, R1_ANSWER, id="r1-model-opens-think"),
    pytest.param("deepseek_r1", R1_PROMPT, R1_REASONING + "Hmm, 391", R1_REASONING + "Hmm, 391", None,
                 id="r1-truncated-is-all-reasoning"),
    pytest.param("deepseek_r1", "", R1_REASONING + "</think>", R1_REASONING, None, id="r1-no-answer-yet"),
    pytest.param("deepseek_r1", R1_PROMPT, "</think>\n\nJust 391.", None, "\n\nJust 391.", id="r1-empty-reasoning"),
    pytest.param("deepseek_r1", R1_PROMPT + "\n</think>\n\n", "17 × 23 = 391.", None, "17 × 23 = 391.",
                 id="r1-thinking-closed-in-prompt"),
    pytest.param("deepseek_r1", R1_PROMPT, R1_REASONING + "</think>" + R1_ANSWER + " Use </think> to close.",
                 R1_REASONING, R1_ANSWER + " Use </think> to close.", id="r1-tags-after-the-end-are-content"),
    pytest.param("qwen3", QWEN3_PROMPT, "<think>" + QWEN3_REASONING + "</think>" + QWEN3_ANSWER,
                 QWEN3_REASONING, QWEN3_ANSWER, id="qwen3-thinking"),
    pytest.param("qwen3", QWEN3_PROMPT, "\n<think>\nShort.\n</think>\n\n391", "\nShort.\n", "\n\n391",
                 id="qwen3-whitespace-before-think"),
    pytest.param("qwen3", QWEN3_NO_THINK_PROMPT, "The answer is 391.", None, "The answer is 391.",
                 id="qwen3-enable-thinking-false"),
    pytest.param("qwen3", QWEN3_PROMPT, "The answer is 391, no <think> needed </think>.", None,
                 "The answer is 391, no <think> needed </think>.", id="qwen3-instruct-2507-never-thinks"),
    pytest.param("qwen3", QWEN3_OPEN_THINK_PROMPT, QWEN3_REASONING + "</think>" + QWEN3_ANSWER,
                 QWEN3_REASONING, QWEN3_ANSWER, id="qwen3-think-opened-in-prompt"),
    pytest.param("qwen3", QWEN3_PROMPT, "<think>\nOkay, 17 * 23 is", "\nOkay, 17 * 23 is", None,
                 id="qwen3-truncated-is-all-reasoning"),
    pytest.param("qwen3", QWEN3_MULTI_TURN_PROMPT, "<think>\nThe tool said 18C.\n</think>\n\nIt is 18°C and sunny.",
                 "\nThe tool said 18C.\n", "\n\nIt is 18°C and sunny.", id="qwen3-multi-turn"),
    pytest.param("qwen3", QWEN3_PROMPT, "<thinking>is not the tag</thinking>", None,
                 "<thinking>is not the tag</thinking>", id="qwen3-lookalike-tag"),
    pytest.param("qwen3", QWEN3_PROMPT, "<thi", None, "<thi", id="qwen3-partial-tag-at-end-is-content"),
    pytest.param("deepseek_r1", R1_PROMPT, "Almost done </thi", "Almost done </thi", None,
                 id="r1-partial-tag-at-end-is-reasoning"),
    pytest.param("qwen3", QWEN3_PROMPT, "", None, None, id="empty-output"),
]


def streamed(name: str, prompt: str, pieces: list[str]) -> tuple[str, str]:
    parser = make_reasoning_parser(name, prompt)
    steps = [parser.feed(piece) for piece in pieces] + [parser.finish()]
    return "".join(s.reasoning for s in steps), "".join(s.content for s in steps)


@pytest.mark.parametrize("name, prompt, output, reasoning, content", CASES)
def test_whole_output(name, prompt, output, reasoning, content):
    assert make_reasoning_parser(name, prompt).parse(output) == (reasoning, content)


@pytest.mark.parametrize("name, prompt, output, reasoning, content", CASES)
def test_streamed_at_every_split_equals_whole(name, prompt, output, reasoning, content):
    expected = (reasoning or "", content or "")
    for cut in range(len(output) + 1):
        assert streamed(name, prompt, [output[:cut], output[cut:]]) == expected, cut
    assert streamed(name, prompt, list(output)) == expected
    for first in range(len(output)):  # three pieces: any middle piece
        assert streamed(name, prompt, [output[:first], output[first:first + 5], output[first + 5:]]) == expected


def test_text_is_released_promptly_and_split_tags_are_held():
    parser = make_reasoning_parser("deepseek_r1", R1_PROMPT)
    assert parser.feed("Okay, 17 * 23") == ReasoningStep(reasoning="Okay, 17 * 23")
    assert parser.feed(" is 391.\n</th") == ReasoningStep(reasoning=" is 391.\n")
    assert parser.feed("ink>\n\n391") == ReasoningStep(content="\n\n391")
    assert parser.feed(" </think> stays") == ReasoningStep(content=" </think> stays")
    assert parser.finish() == ReasoningStep()


def test_qwen3_holds_only_what_may_open_think():
    parser = make_reasoning_parser("qwen3", QWEN3_PROMPT)
    assert parser.feed("\n<th") == ReasoningStep()
    assert parser.feed("ink>\nHmm") == ReasoningStep(reasoning="\nHmm")
    plain = make_reasoning_parser("qwen3", QWEN3_PROMPT)
    assert plain.feed("The answer") == ReasoningStep(content="The answer")


def test_parse_does_not_disturb_streaming_state():
    parser = make_reasoning_parser("qwen3", QWEN3_PROMPT)
    assert parser.feed("<think>a") == ReasoningStep(reasoning="a")
    assert parser.parse("plain") == (None, "plain")
    assert parser.feed("</think>b") == ReasoningStep(content="b")


def test_registry_and_unknown_name():
    assert sorted(REASONING_PARSERS) == ["deepseek_r1", "qwen3"]
    with pytest.raises(ValueError, match="deepseek_r1"):
        make_reasoning_parser("granite")
