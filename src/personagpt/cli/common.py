"""What every command shares: user-facing errors, reading lines from a person, loading the model, personas."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from personagpt.errors import PersonaGPTError, UserError
from personagpt.format import DEFAULT_ACTIONS

MAX_FACTS = 5
DEBUG = {"on": False}  # set by the global --debug flag


@contextmanager
def friendly_errors() -> Iterator[None]:
    """The project's own errors, Ctrl-C and closed pipes become a message and an exit code.

    Anything else is a bug: one line saying so, or with ``--debug`` the full traceback.
    """
    try:
        yield
    except PersonaGPTError as e:
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("\nInterrupted.", err=True)
        raise typer.Exit(130) from None
    except BrokenPipeError:
        raise typer.Exit(1) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as e:
        if DEBUG["on"]:
            raise
        typer.echo(f"Internal error ({type(e).__name__}: {e}). This is a bug in PersonaGPT; run the command again "
                   "with `personagpt --debug ...` to see the traceback, and please report it.", err=True)
        raise typer.Exit(1) from None


def quiet_libraries() -> None:
    """Silence transformers' progress bars and info logs (a command prints its own progress)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@contextmanager
def typing_hidden() -> Iterator[None]:
    """At a terminal, what a person types while the bot streams is not echoed into the bot's line: it waits,
    unseen, in the terminal's input and is read at the next prompt (Ctrl-C still interrupts)."""
    try:
        import termios  # POSIX only

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd) if sys.stdin.isatty() else None
    except (ImportError, OSError, ValueError):
        saved = None
    if saved is None:
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


class Prompter:
    """Reads a person's lines. At a terminal through readline (arrow keys edit the line, up/down recall earlier
    lines of the session); from a pipe as bytes, so bad encodings and EOF are handled, not raised."""

    def __init__(self, stream=None, out: Callable[[str], None] | None = None, terminal: bool | None = None) -> None:
        self.stream = stream or sys.stdin.buffer
        self.out = out or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
        self.terminal = sys.stdin.isatty() and sys.stdout.isatty() if terminal is None else terminal
        if self.terminal:
            try:
                import readline  # noqa: F401  (importing it gives input() line editing and history)
            except ImportError:  # Python built without it (e.g. Windows): plain input() still works
                pass

    def ask(self, prompt: str) -> str | None:
        """The stripped line typed, or None at end of input."""
        while True:
            if self.terminal:
                try:
                    line = input(prompt).strip()
                    line.encode("utf-8")  # input() hands undecodable bytes over as lone surrogates
                    return line
                except UnicodeEncodeError:
                    self.out("That line is not valid UTF-8 text; please type it again.\n")
                    continue
                except KeyboardInterrupt:  # what is printed next starts on its own line
                    self.out("\n")
                    raise
                except EOFError:
                    self.out("\n")
                    return None
                except UnicodeDecodeError:
                    self.out("That line is not valid UTF-8 text; please type it again.\n")
                    continue
            self.out(prompt)
            raw = self.stream.readline()
            if not raw:
                self.out("\n")
                return None
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                self.out("\nThat line is not valid UTF-8 text; please type it again.\n")
                continue
            self.out(line + "\n")  # not echoed by a terminal: the output reads as the conversation it was
            return line


def load(model_name: str | None, device: str | None, trainable: bool = False, tokenizer: Path | None = None):
    """``load_chat_model`` with a note on stderr of what is loading."""
    from personagpt.models.heap import return_freed_memory
    from personagpt.models.load import load_chat_model, resolve_model_name

    quiet_libraries()
    if not trainable:  # inference: large blocks of changing sizes go back to the OS (see personagpt.models.heap)
        return_freed_memory()
    shown = model_name if model_name and model_name.startswith("random:") else resolve_model_name(model_name)
    typer.echo(f"Loading {shown} ...", err=True)
    return load_chat_model(model_name, device=device, trainable=trainable, tokenizer=tokenizer)


def say_decoding(model, compiled: bool = False, sampling=None) -> None:
    """One line on stderr: what decodes on this machine (llama.cpp where installed, else the torch path this CPU
    gets; see personagpt.generate.slots), and best-of-N if on."""
    from personagpt.generate.slots import choose_backend
    from personagpt.models.fastpath import choose_fast_path

    if compiled:
        what = "torch.compile over the reference model (--compile)"
    elif choose_backend(None, model)[0] == "llama.cpp":
        from personagpt.generate.llamacpp import default_weights

        what = f"llama.cpp, {default_weights()} weights (llama-cpp-python is installed; PERSONAGPT_BACKEND=torch " \
               "for torch)"
    else:
        what = choose_fast_path(None, model).describe()
    if sampling is not None and sampling.num_candidates > 1 and sampling.do_sample:
        when = f"after {sampling.commit_tokens} tokens" if sampling.commit_tokens else "among whole replies"
        what += f"; replies best of {sampling.num_candidates}, chosen {when} (--candidates 1: one sample)"
    if sampling is not None and (sampling.goal_candidates or 1) > 1 and sampling.do_sample:
        what += f"; a turn with a goal best of {sampling.goal_candidates} (--goal-candidates 1: one sample)"
    typer.echo(f"Decoding: {what}", err=True)


def terminal_engine(model, fmt, sampling, window: int, compiled: bool = False):
    """An engine of the terminal chat's own where the engine's backend is llama.cpp (twice torch's pace per token
    on the project's CPUs), sized for one conversation's rows; None: the terminal decodes on torch itself."""
    from personagpt.generate.slots import choose_backend

    if compiled or sampling.num_beams > 1 or choose_backend(None, model)[0] != "llama.cpp":
        return None
    from personagpt.generate.engine import Engine

    rows = sampling.most_candidates * 2  # each candidate may take a guide row beside it
    return Engine(model, fmt, max_batch=rows, max_queue=rows, capacity=window)


def persona_from_flags(persona: list[str] | None, persona_file: Path | None, random_persona: bool,
                       personas_path: Path | None, rng: random.Random) -> list[str] | None:
    from personagpt.data.dialogues import load_personas, read_facts_file, resolve_personas_path

    chosen = sum([bool(persona), persona_file is not None, random_persona])
    if chosen > 1:
        raise UserError("use only one of --persona, --persona-file and --random-persona")
    if persona:
        facts = [f.strip() for f in persona]
        if not all(facts):
            raise UserError("persona facts must not be empty")
    elif persona_file is not None:
        facts = read_facts_file(persona_file)
        if not facts:
            raise UserError(f"{persona_file}: no persona facts in the file")
    elif random_persona:
        facts = rng.choice(load_personas(resolve_personas_path(personas_path)))
    else:
        return None
    if len(facts) > MAX_FACTS:
        raise UserError(f"at most {MAX_FACTS} persona facts, got {len(facts)}")
    return facts


def parse_action(text: str) -> str:
    """An action index (0-10) or a free-text goal."""
    text = text.strip()
    if text.lstrip("+-").isdigit():
        index = int(text)
        if not 0 <= index < len(DEFAULT_ACTIONS):
            raise UserError(f"There is no action {text}; use 0-{len(DEFAULT_ACTIONS) - 1} or a free-text goal")
        return DEFAULT_ACTIONS[index]
    if not text:
        raise UserError("an action must not be empty")
    return text


@contextmanager
def loading(what: str | None) -> Iterator[None]:
    """Say what is loading (on stderr) and how long it took, for a set-up that takes tens of seconds."""
    if what:
        typer.echo(f"Loading {what} ...", err=True)
    started = time.perf_counter()
    yield
    typer.echo(f"  done in {time.perf_counter() - started:.1f} s", err=True)
