"""``personagpt interact``: chat with the bot in the terminal (mode 0: persona chat; mode 1: steer it).

Replies stream in as they are decoded. Lines starting with ``/`` are commands (``/help`` lists them).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from personagpt.cli.common import (MAX_FACTS, Prompter, UserError, friendly_errors, load, parse_action,
                                   persona_from_flags, say_decoding, terminal_engine,
                                   typing_hidden)
from personagpt.cli.options import (DeviceOpt, MaxLenOpt, ModelOpt, PersonaFileOpt, PersonaOpt, PersonasPathOpt,
                                    RandomPersonaOpt, SeedOpt, TurnsOpt, sampling_options)
from personagpt.errors import PersonaGPTError
from personagpt.format import DEFAULT_ACTIONS, DEFAULT_CONTEXT
from personagpt.generate.sampling import SamplingConfig
from personagpt.personas.cards import persona_card, read_card, write_card
from personagpt.text import DisplayStream, to_model

COMMANDS = """Commands:
  /help              this list
  /reset             start a new conversation (same persona)
  /persona           show the bot's persona facts
  /persona A | B     replace them with facts A, B, ... (separated by |) and start a new conversation
  /save FILE         write the conversation so far as JSONL (the project's dialogue format)
  /goals             mode 1: show the 11 action codes again
  /greeting [N]      a character card's greetings; /greeting N starts over with greeting N
  /card FILE         write the persona as a character card (V2; .json, or a PNG for any other name)
  /quit              end the chat (Ctrl-D does too)"""

# measured in bench/README.md: a cold compilation of the bundled model's decoding step on the 2-core CPU
COMPILE_NOTE = ("--compile: the first reply waits for a one-off compilation (about 40 s for the bundled model on "
                "a 2-core CPU with a cold cache, more on slower CPUs; later runs reuse the cache).")


class Quit(Exception):
    """The person asked to end the chat."""


class ChatSession:
    """The terminal chat: the conversation, its persona, and the person's in-chat commands."""

    def __init__(self, model, fmt, mode: int, facts: list[str] | None, prompter: Prompter, conversation=None,
                 greetings: list[str] | None = None, name: str = "", **kwargs) -> None:
        """``conversation`` continues an existing session (e.g. teaching's); ``facts`` is then its list, which
        ``/persona`` changes in place. ``greetings`` (a character card's, mode 0): the bot opens the conversation
        with the first, as speaker 1."""
        from personagpt.generate.conversation import Conversation

        self.mode, self.prompter = mode, prompter
        self.facts = facts if facts is not None else []
        self.goals: list[str | None] = []  # mode 1: the goal of each turn (None for the person's)
        self.turns_done = 0  # bot turns of this conversation (a new conversation starts a new budget)
        self.menu_shown = False
        self.greetings, self.greeting, self.name = list(greetings or []), 0, name
        if conversation is None:
            if mode == 0:
                conversation = Conversation.with_persona(model, fmt, self.facts, speaker=self.bot_speaker, **kwargs)
            else:
                conversation = Conversation.with_goal(model, fmt, DEFAULT_ACTIONS[0], self.facts, **kwargs)
        self.conversation = conversation
        self.open()

    @property
    def bot_speaker(self) -> int:
        return 1 if self.greetings and self.mode == 0 else 2

    def open(self) -> None:
        """With a card's greeting, the bot's opening turn starts the conversation."""
        if self.greetings and self.mode == 0:
            self.conversation.add_turn(to_model(self.greetings[self.greeting]))

    def new_conversation(self) -> None:
        """Forget the turns; the persona prefix is rebuilt from the current facts."""
        self.conversation.reset()
        if self.mode == 0:
            self.conversation.set_persona(self.facts, speaker=self.bot_speaker)
        self.goals = []
        self.turns_done = 0
        self.open()

    def show_opening(self) -> None:
        if self.greetings and self.mode == 0:
            typer.echo(f"Bot: {self.greetings[self.greeting]}")

    def transcript(self) -> dict:
        """The conversation in the JSONL dialogue format: the person is p1 in mode 0, the bot in mode 1."""
        bot_first = self.mode == 1 or self.bot_speaker == 1
        record = {"turns": list(self.conversation.turns),
                  "p1_facts": self.facts if bot_first else [],
                  "p2_facts": self.facts if not bot_first else []}
        if self.mode == 1:
            record["actions"] = self.goals
        return record

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.transcript()) + "\n")
        typer.echo(f"(saved {len(self.conversation.turns)} turns to {path})")

    def command(self, line: str) -> None:
        """Run an in-chat command (a line starting with /)."""
        name, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        if name in ("quit", "exit", "q"):
            raise Quit
        if name == "help":
            typer.echo(COMMANDS)
        elif name == "goals":
            self.show_goals()
        elif name == "greeting":
            if not self.greetings:
                typer.echo("(no greetings: --card gives a character card's)")
            elif not argument:
                for i, greeting in enumerate(self.greetings):
                    typer.echo(f"  {i}  {greeting}")
            elif not argument.isdigit() or int(argument) >= len(self.greetings):
                typer.echo(f"(no greeting {argument}; /greeting lists them, 0-{len(self.greetings) - 1})")
            else:
                self.greeting = int(argument)
                self.new_conversation()
                typer.echo("(new conversation)")
                self.show_opening()
        elif name == "card":
            if not argument:
                typer.echo("(usage: /card FILE; FILE.json writes JSON, any other name a PNG)")
            else:
                path = write_card(persona_card(self.name or "PersonaGPT", self.facts,
                                               self.greetings[self.greeting] if self.greetings else ""),
                                  Path(argument).expanduser())
                typer.echo(f"(the persona as a character card: {path})")
        elif name == "reset":
            self.new_conversation()
            typer.echo("(new conversation)")
        elif name == "persona":
            if argument:
                facts = [f.strip() for f in argument.split("|") if f.strip()]
                if len(facts) > MAX_FACTS:
                    typer.echo(f"(at most {MAX_FACTS} facts; the persona is unchanged)")
                    return
                old = list(self.facts)
                self.facts[:] = facts
                try:
                    self.new_conversation()
                except PersonaGPTError as e:  # e.g. too long for the context window
                    self.facts[:] = old
                    self.new_conversation()
                    typer.echo(f"({e}; the persona is unchanged)")
                    return
                typer.echo("(new persona, new conversation)")
            typer.echo("Persona: " + (" ".join(self.facts) or "(none)"))
        elif name == "save":
            if not argument:
                typer.echo("(usage: /save FILE)")
            else:
                self.save(Path(argument).expanduser())
        else:
            typer.echo(f"(unknown command /{name}; /help lists the commands)")

    def read(self, prompt: str) -> str:
        """The next non-command line; raises Quit at end of input or on /quit."""
        while True:
            line = self.prompter.ask(prompt)
            if line is None:
                raise Quit
            if line.startswith("/"):
                self.command(line)
                continue
            return line

    def user_turn(self) -> None:
        from personagpt.generate.conversation import ContextOverflowError

        while True:
            text = self.read(">> User: ")
            if not text:
                typer.echo("(type a message, /help for commands, or press Ctrl-D to end the chat)")
                continue
            try:
                self.conversation.add_turn(to_model(text))
            except ContextOverflowError:
                typer.echo(f"That message is too long for the model's context ({len(text)} characters); "
                           "please say it in fewer words.")
                continue
            self.goals.append(None)
            return

    def show_goals(self) -> None:
        typer.echo("Goals (the 11 action codes):")
        for i, goal in enumerate(DEFAULT_ACTIONS):
            typer.echo(f"  {i:2d}  {goal}")
        self.menu_shown = True

    def choose_goal(self) -> str:
        if not self.menu_shown:
            self.show_goals()
            typer.echo("(/goals shows this list again)")
        while True:
            choice = self.read(f">> Action [0-{len(DEFAULT_ACTIONS) - 1}] or type a new goal: ")
            if not choice:
                typer.echo("Pick an action number or type a goal.")
                continue
            try:
                return parse_action(choice)
            except UserError as e:
                typer.echo(f"{e}.")

    def bot_turn(self, label: str) -> bool:
        """Stream the bot's reply to the terminal as it is decoded (with natural spacing). Ctrl-C stops this
        reply only: the cut-off reply is dropped, with the message it answered, so the transcript holds no half
        turn; returns False then."""
        with typing_hidden():  # from the label on: keys typed now wait, unseen, for the next prompt
            return self._stream_reply(label)

    def _stream_reply(self, label: str) -> bool:
        sys.stdout.write(f"{label}: ")
        sys.stdout.flush()
        shown, stream = DisplayStream(), self.conversation.stream()
        turns_before = len(self.conversation.turns)
        try:
            for piece in stream:
                sys.stdout.write(shown.push(piece))
                sys.stdout.flush()
            sys.stdout.write(shown.flush() + "\n")
            sys.stdout.flush()
            return True
        except KeyboardInterrupt:
            stream.close()  # records the partial reply, which is then withdrawn
            self.conversation.truncate(turns_before - (self.mode == 0))
            del self.goals[len(self.conversation.turns):]
            sys.stdout.write("\n")
            typer.echo("(reply stopped; it and the message it answered are left out of the conversation. "
                       "Ctrl-C at the prompt or Ctrl-D ends the chat)")
            return False

    def run(self, num_turns: int, compiling: bool = False) -> None:
        typer.echo(f"{num_turns} turns (--num-turns to change); /help for commands, Ctrl-D or /quit to end.")
        self.show_opening()
        try:
            while self.turns_done < num_turns:
                started = time.perf_counter()
                if self.mode == 0:
                    self.user_turn()
                    started = time.perf_counter()
                    if not self.bot_turn("Bot"):
                        continue
                else:
                    goal = self.choose_goal()
                    self.conversation.set_goal(goal, self.facts)
                    started = time.perf_counter()
                    if not self.bot_turn(f"Bot [{goal}]"):
                        continue
                    self.goals.append(goal)
                if compiling and self.turns_done == 0:
                    typer.echo(f"(first reply, with the compilation: {time.perf_counter() - started:.0f} s)", err=True)
                self.turns_done += 1
                if self.mode == 1:
                    self.user_turn()
            typer.echo(f"That was the last of {num_turns} turns (--num-turns to change).")
        except Quit:
            pass


@sampling_options
def interact(
    mode: Annotated[int, typer.Option("--mode", "-M", min=0, max=1, help=(
        "0: chat with a persona bot (you give its facts). "
        "1: steer the bot with an action code (turn-level goal) each turn, then answer it."))] = 0,
    model: ModelOpt = None,
    persona: PersonaOpt = None,
    persona_file: PersonaFileOpt = None,
    random_persona: RandomPersonaOpt = False,
    card: Annotated[Optional[Path], typer.Option("--card", help=(
        "A character card (V2 or V3: JSON, or a PNG with the card inside): its prose becomes the persona facts "
        "and the bot opens with its greeting (/greeting lists the others)."))] = None,
    personas_path: PersonasPathOpt = None,
    num_turns: TurnsOpt = 8,
    max_length: MaxLenOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    save: Annotated[Optional[Path], typer.Option("--save", help=(
        "Write the conversation to this file at exit, as JSONL in the project's dialogue format."))] = None,
    compile: Annotated[bool, typer.Option("--compile", help=(
        "Run the bot's decoding steps through torch.compile: faster turns after a one-off compilation "
        "before the first reply (about 40 s for the bundled model on a 2-core CPU, cold cache)."))] = False,
    sampling: SamplingConfig = None,
) -> None:
    """Chat with the bot in the terminal; its replies stream in as they are decoded.

    Mode 0 asks for the bot's persona facts (unless given with --persona, --persona-file or --random-persona)
    and then alternates your messages with its replies. Mode 1 shows the 11 action codes each turn; the bot
    generates a turn pursuing the one you pick (or a goal you type), and you answer it. At a terminal, arrow keys
    edit the line and recall earlier ones. Type /help for the in-chat commands (/reset, /persona, /save, /quit);
    Ctrl-D ends the chat.
    """
    with friendly_errors():
        prompter = Prompter()
        facts = persona_from_flags(persona, persona_file, random_persona, personas_path, random.Random(seed))
        greetings, name = [], ""
        if card is not None:
            if facts is not None or mode == 1:
                raise UserError("--card gives the persona of a mode 0 chat: leave out --persona, --persona-file, "
                                "--random-persona and --mode 1")
            read = read_card(card)
            taken = read.persona()
            if not taken.facts:
                raise UserError(f"{card}: the card's description gives no persona facts")
            facts, greetings, name = taken.facts, read.greetings(), read.name
            typer.echo(f"Card: {read.name}" + (f" ({len(greetings)} greetings; /greeting lists them)"
                                               if len(greetings) > 1 else ""))
        loaded, fmt = load(model, device)  # before asking for facts: a bad --model fails before any typing
        say_decoding(loaded, compile, sampling)
        check_context_budget(loaded, fmt, facts, max_length, sampling)
        if mode == 0 and facts is None:
            facts = ask_persona(prompter)
            check_context_budget(loaded, fmt, facts, max_length, sampling)
        if compile:
            typer.echo(COMPILE_NOTE, err=True)
        window = max_length or default_window(loaded, sampling)
        engine = terminal_engine(loaded, fmt, sampling, window, compile)
        session = ChatSession(loaded, fmt, mode, facts, prompter, sampling=sampling, max_context=window,
                              seed=seed, compile=compile, greetings=greetings, name=name, engine=engine)
        if mode == 0:
            typer.echo("Persona: " + " ".join(facts))
        try:
            session.run(num_turns, compiling=compile)
        finally:
            if save is not None:
                session.save(save)
            if engine is not None:
                engine.close()
        typer.echo("Goodbye.")


def default_window(model, sampling: SamplingConfig) -> int:
    """The chat's context without --max-length: the server's (1024 tokens), grown for a longer --max-new-tokens,
    never past the model's own."""
    from personagpt.models.load import context_limit  # start-up: the CLI loads the library in its commands

    return min(context_limit(model), max(DEFAULT_CONTEXT, sampling.max_new_tokens + 256))


def check_context_budget(model, fmt, facts: list[str] | None, max_length: int | None, sampling: SamplingConfig) -> None:
    """Fail before any typing when the context window cannot hold the persona, a reply and a message."""
    window = max_length or default_window(model, sampling)
    persona = len(fmt.persona_prefix(facts or []))
    room = window - sampling.max_new_tokens - persona
    if room < 8:  # not even a short message fits
        what = f"the persona ({persona} tokens) and " if facts else ""
        raise UserError(
            f"a context window of {window} tokens is too small: {what}a reply of up to {sampling.max_new_tokens} "
            f"tokens (--max-new-tokens) leave no room for your messages; use --max-length "
            f"{persona + sampling.max_new_tokens + 64} or more"
            + (", or fewer or shorter persona facts" if facts else ""))


def ask_persona(prompter: Prompter) -> list[str]:
    typer.echo(f"Give the bot up to {MAX_FACTS} persona facts (empty line to stop).")
    facts: list[str] = []
    while len(facts) < MAX_FACTS:
        fact = prompter.ask(f">> Fact {len(facts) + 1}: ")
        if fact is None:
            break
        if not fact:
            if facts:
                break
            typer.echo("The bot needs at least one fact, e.g. 'i have two dogs.'")
            continue
        facts.append(fact)
    if not facts:
        raise UserError("no persona facts given")
    return facts
