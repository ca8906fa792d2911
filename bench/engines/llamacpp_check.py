"""Proof with a real engine: llama.cpp (through llama-cpp-python) serves the exported GGUF, prompting it with the
chat template embedded in the file, and the persona bot answers in character.

llama-cpp-python compiles llama.cpp from source (minutes on 2 cores), so it is kept out of CI:

    python -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python
    personagpt export --format gguf --dtype f16 --out /tmp/personagpt.gguf
    /tmp/llvenv/bin/python bench/engines/llamacpp_check.py /tmp/personagpt.gguf
"""

from __future__ import annotations

import json
import sys

from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

PERSONA = ["i have two dogs named max and bella.", "i work as a nurse at a hospital.", "i love hiking."]
QUESTIONS = ["hi ! what do you do for a living ?", "do you have any pets ?", "what do you like to do on weekends ?"]
CUES = [("nurse", "hospital"), ("dog", "max", "bella"), ("hik", "walk", "outdoor")]


def main(path: str) -> None:
    llm = Llama(model_path=path, n_ctx=1024, n_threads=2, verbose=False, seed=0)
    template = llm.metadata["tokenizer.chat_template"]
    eos = llm._model.token_get_text(llm.token_eos())
    # The handler llama-cpp-python builds from the embedded template by default also stops when the last token is
    # eos, and it checks the prompt's tokens too: a PersonaGPT prompt ends with eos (the end of the user's turn),
    # so it would answer "" at once. Same template, same eos stop string, without that token check:
    llm.chat_handler = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token="").to_chat_handler()
    print(f"chat template read from the GGUF file: {len(template)} characters; end of turn: {eos}")
    messages = [{"role": "system", "content": "\n".join(PERSONA)}]
    in_character = 0
    for question, cues in zip(QUESTIONS, CUES):
        messages.append({"role": "user", "content": question})
        reply = llm.create_chat_completion(messages=messages, max_tokens=40, temperature=0)
        text = reply["choices"][0]["message"]["content"].strip()
        hit = any(c in text.lower() for c in cues)
        in_character += hit
        print(json.dumps({"user": question, "bot": text, "in character": hit}))
        messages.append({"role": "assistant", "content": text})
    steered = llm.create_chat_completion(messages=[{"role": "system", "content": "\n".join(PERSONA + [
        "goal: ask about kids."])}, {"role": "user", "content": "hello ! how are you ?"}], max_tokens=40, temperature=0)
    print(json.dumps({"goal": "ask about kids.", "bot": steered["choices"][0]["message"]["content"].strip()}))
    print(f"{in_character}/{len(QUESTIONS)} replies named a persona fact")


if __name__ == "__main__":
    main(sys.argv[1])
