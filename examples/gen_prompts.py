#!/usr/bin/env python3
"""Writes examples/prompts.jsonl: 1,000 chat prompts in the OpenAI Batch API
input format, deterministically (no randomness: the same file every time).

    python3 examples/gen_prompts.py > examples/prompts.jsonl

The lines carry no "model": `llmq run` fills in --model or the cluster's
default (gpt-4o-mini with OPENAI_API_KEY, sim-model with the simulator).
"""
import json
import sys

SUBJECTS = [
    "photosynthesis", "the French Revolution", "binary search", "plate tectonics",
    "the TCP handshake", "compound interest", "the immune system", "black holes",
    "the printing press", "garbage collection", "supply and demand", "the water cycle",
    "public-key cryptography", "the Roman Republic", "neural networks", "vaccines",
    "the stock market", "quantum entanglement", "the Silk Road", "hash tables",
    "climate feedback loops", "the Renaissance", "ZeroMQ sockets", "rainbows",
    "the Krebs cycle",
]
TASKS = [
    "Explain {s} to a ten-year-old in three sentences.",
    "Give three surprising facts about {s}.",
    "Write a haiku about {s}.",
    "What is the most common misconception about {s}?",
    "Summarize {s} in one paragraph for a busy executive.",
    "List two open questions researchers still ask about {s}.",
    "Compare {s} with something from everyday life.",
    "Write a multiple-choice quiz question about {s}, with the answer.",
]
SYSTEMS = [
    None,
    "You are a concise assistant.",
    "You are a patient teacher.",
    "Answer in plain English, no jargon.",
    "You are an expert who cites no sources but is precise.",
]


def main(out):
    n = 0
    for variant in range(5):
        for t, task in enumerate(TASKS):
            for s, subject in enumerate(SUBJECTS):
                n += 1
                messages = []
                system = SYSTEMS[(s + t + variant) % len(SYSTEMS)]
                if system:
                    messages.append({"role": "system", "content": system})
                prompt = task.format(s=subject)
                if variant:
                    prompt += " (variant %d)" % variant
                messages.append({"role": "user", "content": prompt})
                line = {
                    "custom_id": "prompt-%04d" % n,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"messages": messages, "max_tokens": 64 + 16 * (n % 5),
                             "temperature": 0},
                }
                out.write(json.dumps(line, separators=(",", ":")) + "\n")
    assert n == 1000, n


if __name__ == "__main__":
    main(sys.stdout)
