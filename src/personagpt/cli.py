"""The ``personagpt`` command line: thin wrappers over the library."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from personagpt.format import DEFAULT_ACTIONS

app = typer.Typer(
    help="PersonaGPT: persona-conditioned, controllable open-domain dialogue.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# ---- options shared by several commands -------------------------------------------------------------------------

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="Local checkpoint directory, LoRA adapter directory, or Hugging Face hub id "
                    "(hub ids need a network). Defaults to the bundled model once one ships.")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="torch device, e.g. cpu or cuda (default: cuda if available).")]
TopKOpt = Annotated[int, typer.Option("--top-k", "--top_k", "-k", help="Top-k sampling: keep the k likeliest tokens.")]
TopPOpt = Annotated[float, typer.Option("--top-p", "--top_p", "-p", help="Nucleus sampling probability mass.")]
TempOpt = Annotated[float, typer.Option(help="Sampling temperature (lower is more conservative).")]
RepPenOpt = Annotated[float, typer.Option("--repetition-penalty", help="Penalty > 1 discourages repeated tokens.")]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", help="Longest reply, in tokens.")]
MaxLenOpt = Annotated[Optional[int], typer.Option(
    "--max-length", "--max_length", "-maxlen",
    help="Context window in tokens (default: the model's). Oldest turns are dropped to fit; the persona never is.")]
GreedyOpt = Annotated[bool, typer.Option("--greedy", help="Greedy decoding instead of sampling.")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Random seed for reproducible sampling.")]
TurnsOpt = Annotated[int, typer.Option("--num-turns", "--num_turns", "-turns", min=1, help="Number of turns.")]
PersonaOpt = Annotated[Optional[list[str]], typer.Option(
    "--persona", help="A persona fact (repeat for several, up to 5).")]
PersonaFileOpt = Annotated[Optional[Path], typer.Option(
    "--persona-file", help="Text file with one persona fact per line.")]
RandomPersonaOpt = Annotated[bool, typer.Option(
    "--random-persona", help="Draw a random persona from --personas-path.")]
PersonasPathOpt = Annotated[Optional[Path], typer.Option(
    "--personas-path", help="JSONL of persona profiles (default: $PERSONAGPT_DATA/personachat/personas_train.jsonl).")]

MAX_FACTS = 5


def _sampling(top_k: int, top_p: float, temperature: float, repetition_penalty: float, max_new_tokens: int,
              greedy: bool):
    from personagpt.generation import SamplingConfig

    return SamplingConfig(do_sample=not greedy, top_k=top_k, top_p=top_p, temperature=temperature,
                          repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens)


class UserError(Exception):
    """A mistake in the command line or input: reported in one line, no traceback."""


@contextmanager
def _friendly_errors() -> Iterator[None]:
    """Turn the library's user-facing errors, Ctrl-C and closed pipes into a message and an exit code."""
    from personagpt.data import DataError
    from personagpt.models import ModelNotFoundError

    try:
        yield
    except (UserError, DataError, ModelNotFoundError, ValueError) as e:
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("\nInterrupted.", err=True)
        raise typer.Exit(130) from None
    except BrokenPipeError:
        raise typer.Exit(1) from None


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class Prompter:
    """Reads lines from stdin as bytes so bad encodings and EOF are handled, not raised."""

    def __init__(self, stream=None, out: Callable[[str], None] | None = None) -> None:
        self.stream = stream or sys.stdin.buffer
        self.out = out or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))

    def ask(self, prompt: str) -> str | None:
        """The stripped line typed, or None at end of input."""
        while True:
            self.out(prompt)
            raw = self.stream.readline()
            if not raw:
                self.out("\n")
                return None
            try:
                return raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                self.out("That line is not valid UTF-8 text; please type it again.\n")


def _load(model_name: str | None, device: str | None, trainable: bool = False):
    """The model for a command; a LoRA adapter is merged into its base unless the command goes on training it."""
    from personagpt.format import PromptFormat
    from personagpt.models import load_model, resolve_model_name

    _quiet_transformers()
    name = resolve_model_name(model_name)
    typer.echo(f"Loading {name} ...", err=True)
    model, tokenizer = load_model(name, device=device, merge_adapter=not trainable)
    return model, PromptFormat(tokenizer)


def _persona_from_flags(persona: list[str] | None, persona_file: Path | None, random_persona: bool,
                        personas_path: Path | None, rng: random.Random) -> list[str] | None:
    from personagpt.data import default_personas_path, load_personas, read_facts_file

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
        facts = rng.choice(load_personas(personas_path or default_personas_path()))
    else:
        return None
    if len(facts) > MAX_FACTS:
        raise UserError(f"at most {MAX_FACTS} persona facts, got {len(facts)}")
    return facts


def _ask_persona(prompter: Prompter) -> list[str]:
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


def _add_turn(conversation, text: str) -> bool:
    """Add the person's turn; False (with a message) when it does not fit the context window."""
    from personagpt.generation import ContextOverflowError

    try:
        conversation.add_turn(text)
        return True
    except ContextOverflowError:
        typer.echo(f"That message is too long for the model's context ({len(text)} characters); "
                   "please say it in fewer words.")
        return False


def _ask_message(prompter: Prompter, conversation) -> bool:
    """Read the person's turn into the conversation; False at end of input."""
    while True:
        text = prompter.ask(">> User: ")
        if text is None:
            return False
        if not text:
            typer.echo("(type a message, or press Ctrl-D to end the chat)")
        elif _add_turn(conversation, text):
            return True


def _ask_action(prompter: Prompter) -> str | None:
    typer.echo("Actions:")
    for i, action in enumerate(DEFAULT_ACTIONS):
        typer.echo(f"  {i:2d}  {action}")
    while True:
        choice = prompter.ask(f">> Action [0-{len(DEFAULT_ACTIONS) - 1}] or type a new goal: ")
        if choice is None:
            return None
        if choice.isdigit():
            if int(choice) < len(DEFAULT_ACTIONS):
                return DEFAULT_ACTIONS[int(choice)]
            typer.echo(f"There is no action {choice}; pick 0-{len(DEFAULT_ACTIONS) - 1} or type a goal.")
        elif choice:
            return choice
        else:
            typer.echo("Pick an action number or type a goal.")


# ---- commands -----------------------------------------------------------------------------------------------------

@app.command()
def interact(
    mode: Annotated[int, typer.Option("--mode", "-M", min=0, max=1, help=(
        "0: chat with a persona bot (you give its facts). "
        "1: steer the bot with an action code (turn-level goal) each turn, then answer it."))] = 0,
    model: ModelOpt = None,
    persona: PersonaOpt = None,
    persona_file: PersonaFileOpt = None,
    random_persona: RandomPersonaOpt = False,
    personas_path: PersonasPathOpt = None,
    num_turns: TurnsOpt = 8,
    top_k: TopKOpt = 10,
    top_p: TopPOpt = 0.92,
    temperature: TempOpt = 1.0,
    repetition_penalty: RepPenOpt = 1.0,
    max_new_tokens: MaxNewOpt = 64,
    max_length: MaxLenOpt = None,
    greedy: GreedyOpt = False,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    compile: Annotated[bool, typer.Option("--compile", help=(
        "Run the bot's decoding steps through torch.compile: faster turns after a one-off compilation "
        "(seconds for small models, longer for big ones) before the first reply."))] = False,
) -> None:
    """Chat with the bot in the terminal.

    Mode 0 asks for the bot's persona facts (unless given with --persona, --persona-file or --random-persona)
    and then alternates your messages with its replies. Mode 1 shows the 11 action codes each turn; the bot
    generates a turn pursuing the one you pick (or a goal you type), and you answer it. Ctrl-D ends the chat.
    """
    with _friendly_errors():
        from personagpt.generation import Conversation

        sampling = _sampling(top_k, top_p, temperature, repetition_penalty, max_new_tokens, greedy)
        prompter = Prompter()
        facts = _persona_from_flags(persona, persona_file, random_persona, personas_path, random.Random(seed))
        loaded, fmt = _load(model, device)  # before asking for facts: a bad --model fails before any typing
        if mode == 0 and facts is None:
            facts = _ask_persona(prompter)
        kwargs = dict(sampling=sampling, max_context=max_length, seed=seed, compile=compile)
        if compile:
            typer.echo("--compile: the bot's first reply waits for a one-off compilation (up to a minute).", err=True)
        if mode == 0:
            typer.echo("Persona: " + " ".join(facts))
            conversation = Conversation.with_persona(loaded, fmt, facts, **kwargs)
            for _ in range(num_turns):
                if not _ask_message(prompter, conversation):
                    break
                typer.echo(f"Bot: {conversation.respond()}")
        else:
            conversation = Conversation.with_action(loaded, fmt, DEFAULT_ACTIONS[0], facts or (), **kwargs)
            for _ in range(num_turns):
                goal = _ask_action(prompter)
                if goal is None:
                    break
                conversation.set_action(goal, facts or ())
                typer.echo(f"Bot [{goal}]: {conversation.respond()}")
                if not _ask_message(prompter, conversation):
                    break
        typer.echo("Goodbye.")


@app.command()
def selfplay(
    model: ModelOpt = None,
    num_turns: TurnsOpt = 8,
    num_convos: Annotated[int, typer.Option("--num-convos", min=1, help="Conversations to run, batched together.")] = 1,
    actions: Annotated[Optional[list[str]], typer.Option(
        "--actions", help="Interviewer goal per turn, cycled: an action index 0-10 or free text (repeatable). "
                          "Default: a random default goal each turn.")] = None,
    persona: PersonaOpt = None,
    persona_file: PersonaFileOpt = None,
    personas_path: PersonasPathOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the transcripts as JSONL here.")] = None,
    top_k: TopKOpt = 10,
    top_p: TopPOpt = 0.92,
    temperature: TempOpt = 1.0,
    repetition_penalty: RepPenOpt = 1.0,
    max_new_tokens: MaxNewOpt = 64,
    max_length: MaxLenOpt = None,
    greedy: GreedyOpt = False,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Let an interviewer agent, driven by action codes, talk with a persona agent.

    The persona agent gets --persona / --persona-file facts, or a random persona per conversation. Prints a
    Role | Action | Response table per conversation; --out saves them as JSONL (loadable as training data).
    """
    with _friendly_errors():
        from transformers import set_seed

        from personagpt.data import default_personas_path, load_personas
        from personagpt.selfplay import pick_actions, self_play

        rng = random.Random(seed)
        goals = [_parse_action(a) for a in actions] if actions else None
        fixed = _persona_from_flags(persona, persona_file, False, None, rng)
        if fixed is not None:
            personas = [fixed] * num_convos
        else:
            pool = load_personas(personas_path or default_personas_path())
            personas = [rng.choice(pool) for _ in range(num_convos)]
        loaded, fmt = _load(model, device)
        if seed is not None:
            set_seed(seed)
        transcripts = self_play(
            loaded, fmt, personas, pick_actions(num_convos, num_turns, goals, rng),
            _sampling(top_k, top_p, temperature, repetition_penalty, max_new_tokens, greedy),
            max_context=max_length, progress=num_convos > 1)
        _print_transcripts(transcripts)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w", encoding="utf-8") as f:
                for t in transcripts:
                    f.write(json.dumps(t.to_json()) + "\n")
            typer.echo(f"Wrote {len(transcripts)} transcript(s) to {out}", err=True)


@app.command()
def prepare(
    data: Annotated[list[Path], typer.Option("--data", help="ConvAI2 text or JSONL file (repeatable).")],
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Model or tokenizer whose tokenizer to use (hub id or directory).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Tokenizer directory (instead of --model).")] = None,
    kind: Annotated[str, typer.Option(help="persona: dialogues; control: action-code JSONL.")] = "persona",
    max_length: Annotated[int, typer.Option("--max-length", min=16, help="Longest training sequence.")] = 512,
    cache_dir: Annotated[Path, typer.Option(help="Where the tokenized dataset is cached.")] = Path("runs/.data-cache"),
) -> None:
    """Tokenize training data into a cached dataset (re-used while inputs and tokenizer are unchanged).

    One sequence per (dialogue, speaker with known facts), loss on that speaker's turns only. `personagpt train` prepares its data itself with the same cache, so this is optional: use it to check data and see its size.
    """
    with _friendly_errors():
        from personagpt.dataset import prepare as prepare_data
        from personagpt.format import PromptFormat
        from personagpt.models import load_tokenizer

        if bool(model) == bool(tokenizer):
            raise UserError("give exactly one of --model and --tokenizer")
        _quiet_transformers()
        fmt = PromptFormat(load_tokenizer(model or tokenizer))
        dataset = prepare_data(data, fmt, max_length, kind, cache_dir)
        lengths = dataset.lengths()
        typer.echo(f"{len(dataset)} sequences, {sum(lengths)} tokens, {dataset.num_targets()} target tokens, "
                   f"longest {max(lengths)}; cached under {cache_dir}")


@app.command()
def train(
    phase: Annotated[str, typer.Option(help="pretrain (persona data), train_loop (persona + action-code data) or both.")] = "pretrain",
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Settings file: .json, .toml, or .env with the original's keys (save_path, data_path, epochs, learn_rate, gradient_accumulation_steps, batch_size, weight_decay, logging_steps, save_steps). Flags override it. Without it, ./.env is read when present.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Base model to fine-tune: hub id or local directory.")] = None,
    from_scratch: Annotated[Optional[str], typer.Option(help="Train a random GPT-2 of LAYERSxWIDTH (e.g. 6x384) instead.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="Tokenizer directory (with --from-scratch).")] = None,
    init_from: Annotated[Optional[str], typer.Option(help="Start from weights an earlier run wrote (its model/ dir: full model or LoRA adapter).")] = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", help="Persona dialogues: ConvAI2 text, JSONL or a directory of them (repeatable).")] = None,
    ctrl_data: Annotated[Optional[list[str]], typer.Option("--ctrl-data", help="Action-code JSONL {goal, facts, history, response} (repeatable).")] = None,
    eval_data: Annotated[Optional[str], typer.Option(help="Dialogues for validation loss.")] = None,
    output_dir: Annotated[Optional[str], typer.Option(help="Run directory: checkpoints, stats, samples/loss.png, model/.")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the persona data.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (overrides --epochs).")] = None,
    learning_rate: Annotated[Optional[float], typer.Option("--learning-rate", "--lr")] = None,
    weight_decay: Annotated[Optional[float], typer.Option()] = None,
    warmup_steps: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per batch, per process.")] = None,
    gradient_accumulation_steps: Annotated[Optional[int], typer.Option()] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option(help="Gradient clipping (0: off).")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Longest training sequence in tokens.")] = None,
    ctrl_ratio: Annotated[Optional[float], typer.Option(help="train_loop: fraction of batches from action-code data.")] = None,
    logging_steps: Annotated[Optional[int], typer.Option()] = None,
    save_steps: Annotated[Optional[int], typer.Option(help="Checkpoint every N steps.")] = None,
    save_total_limit: Annotated[Optional[int], typer.Option(help="Checkpoints kept.")] = None,
    eval_steps: Annotated[Optional[int], typer.Option(help="Validate every N steps (0: at the end only).")] = None,
    eval_limit: Annotated[Optional[int], typer.Option(help="Validation sequences used.")] = None,
    seed: SeedOpt = None,
    mixed_precision: Annotated[Optional[str], typer.Option(help="auto, no, bf16 or fp16 (auto: bf16 where the hardware is fast at it).")] = None,
    lora: Annotated[Optional[bool], typer.Option("--lora/--full", help="LoRA adapters (+ trainable new-token rows) or full fine-tuning.")] = None,
    lora_r: Annotated[Optional[int], typer.Option()] = None,
    lora_alpha: Annotated[Optional[int], typer.Option()] = None,
    lora_dropout: Annotated[Optional[float], typer.Option()] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Tokenized-data cache (default: next to the run directory).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's latest checkpoint.")] = False,
) -> None:
    """Fine-tune a causal LM into a PersonaGPT model.

    pretrain trains on persona dialogues (logs pretrain_loss); train_loop mixes in action-code data (logs persona_loss and ctrl_loss); both runs them in turn. Checkpoints are written every --save-steps and on Ctrl-C; --resume continues exactly where a stopped or killed run left off. Runs on several GPUs or machines with `accelerate launch -m personagpt.cli train ...` or `torchrun`.
    """
    with _friendly_errors():
        from personagpt.training import TrainConfig, read_config_file, train_phases

        if phase not in ("pretrain", "train_loop", "both"):
            raise UserError("--phase must be pretrain, train_loop or both")
        settings = {}
        config_path = config or (Path(".env") if Path(".env").is_file() else None)
        if config_path is not None:
            settings.update(read_config_file(config_path))
            typer.echo(f"Settings from {config_path}", err=True)
        flags = dict(model=model, from_scratch=from_scratch, tokenizer=tokenizer, init_from=init_from, data=data, ctrl_data=ctrl_data,
                     eval_data=eval_data, output_dir=output_dir, epochs=epochs, max_steps=max_steps,
                     learning_rate=learning_rate, weight_decay=weight_decay, warmup_steps=warmup_steps,
                     batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
                     max_grad_norm=max_grad_norm, max_length=max_length, ctrl_ratio=ctrl_ratio,
                     logging_steps=logging_steps, save_steps=save_steps, save_total_limit=save_total_limit,
                     eval_steps=eval_steps, eval_limit=eval_limit, seed=seed, mixed_precision=mixed_precision,
                     lora=lora, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, cache_dir=cache_dir)
        settings.update({k: v for k, v in flags.items() if v is not None})
        if "data" in settings:
            from personagpt.training import _expand_data_path

            settings["data"] = [str(p) for d in settings["data"] for p in _expand_data_path(d)]
        _quiet_transformers()
        result = train_phases(TrainConfig(**settings), phase, resume=resume)
        if result.interrupted:
            raise typer.Exit(130)
        if result.main_process:
            typer.echo(f"Done: {result.step} steps. Model in {result.output_dir / 'model'}, "
                       f"loss curves in {result.output_dir / 'samples' / 'loss.png'}")


@app.command("build-control-data")
def build_control_data(
    data: Annotated[list[Path], typer.Option("--data", help="Dialogues to mine (ConvAI2 text or JSONL; repeatable). Never the validation split.")],
    out: Annotated[Path, typer.Option("--out", help="Output JSONL of {goal, facts, history, response}.")],
    goals: Annotated[Optional[list[str]], typer.Option("--goal", help="Goals to label (repeatable; default: the 11 default goals).")] = None,
    per_goal: Annotated[int, typer.Option(min=1, help="Keep at most this many examples per goal (balance).")] = 500,
    history_turns: Annotated[int, typer.Option(min=0, help="Turns of history kept before each response.")] = 6,
    semantic: Annotated[bool, typer.Option("--semantic/--rules-only", help="Use the sentence-embedding model as well as the rules.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for sampling and for including facts.")] = 0,
) -> None:
    """Build action-code training data: label every turn of the dialogues with the goals it fulfils.

    Prints the number of examples found and kept per goal. The output is what `train --phase train_loop --ctrl-data` mixes in.
    """
    with _friendly_errors():
        from personagpt.control import GoalLabeler, build_control_records
        from personagpt.data import load_dialogues

        _quiet_transformers()
        dialogues = [d for path in data for d in load_dialogues(path)]
        goal_list = [_parse_action(g) for g in goals] if goals else list(DEFAULT_ACTIONS)
        records, counts = build_control_records(dialogues, GoalLabeler(semantic=semantic), goal_list, per_goal,
                                                history_turns, seed=seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record.to_json()) + "\n")
        tmp.replace(out)
        typer.echo("| goal | found | kept |\n|---|---:|---:|")
        for goal, c in counts.items():
            typer.echo(f"| {goal} | {c['found']} | {c['kept']} |")
        typer.echo(f"{len(records)} examples written to {out}")


@app.command()
def teach(
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Corrections are appended here as JSONL {goal, facts, history, response}.")] = Path("corrections.jsonl"),
    from_file: Annotated[Optional[Path], typer.Option("--from-file", help="Replay a saved corrections file instead of asking (non-interactive).")] = None,
    update: Annotated[bool, typer.Option("--update", help="Take gradient steps on each example as it comes; save the weights at exit.")] = False,
    save_to: Annotated[Path, typer.Option(help="Where --update writes the updated model (or LoRA adapter).")] = Path("taught-model"),
    replay_data: Annotated[Optional[list[Path]], typer.Option("--replay-data", help="Persona dialogues replayed during updates so the model does not forget (repeatable).")] = None,
    replay_ctrl: Annotated[Optional[list[Path]], typer.Option("--replay-ctrl", help="Action-code JSONL replayed during updates (repeatable).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Gradient steps per new example.")] = 3,
    learning_rate: Annotated[float, typer.Option("--learning-rate", "--lr", help="Learning rate of the updates.")] = 1e-4,
    persona: PersonaOpt = None,
    top_k: TopKOpt = 10,
    top_p: TopPOpt = 0.92,
    temperature: TempOpt = 1.0,
    repetition_penalty: RepPenOpt = 1.0,
    max_new_tokens: MaxNewOpt = 64,
    greedy: GreedyOpt = False,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Teach the bot turn-level goals, old or new (active learning).

    Each round you pick a goal from the list or type a new one, the bot generates a turn pursuing it, and you accept it (Enter) or type a better one; then you answer as its partner. Every accepted or corrected turn is appended to --out at once, so nothing is lost on Ctrl-C. With --update the model learns from each example on the spot (mixed with --replay-data / --replay-ctrl) and the weights are saved to --save-to at exit.
    """
    with _friendly_errors():
        from personagpt.data import load_control_records
        from personagpt.training import OnlineLearner, record_loss, save_model

        records = load_control_records(from_file) if from_file is not None else None
        facts = _persona_from_flags(persona, None, False, None, random.Random(seed))
        loaded, fmt = _load(model, device, trainable=update)
        learner = None
        if update:
            from personagpt.dataset import prepare as prepare_data
            from personagpt.generation import context_limit

            length = min(512, context_limit(loaded))
            pools = {}
            if replay_data:
                pools["replay_persona"] = prepare_data(replay_data, fmt, length, "persona", progress=False)
            if replay_ctrl:
                pools["replay_control"] = prepare_data(replay_ctrl, fmt, length, "control", progress=False)
            if not pools:
                typer.echo("Note: no --replay-data/--replay-ctrl, so updates see only the new examples.", err=True)
            learner = OnlineLearner(loaded, fmt.tokenizer, learning_rate=learning_rate, steps=steps,
                                    max_length=length, seed=seed or 0, **pools)
        try:
            if records is not None:
                for n, record in enumerate(records, 1):
                    if learner is not None:
                        before = learner.learn(record)
                        after = record_loss(loaded, fmt, record)
                        typer.echo(f"{n}. [{record.goal}] loss {before:.3f} -> {after:.3f}")
                    else:
                        typer.echo(f"{n}. [{record.goal}] loss {record_loss(loaded, fmt, record):.3f}")
                return
            _teach_interactively(loaded, fmt, learner, out, facts or [], _sampling(
                top_k, top_p, temperature, repetition_penalty, max_new_tokens, greedy), seed)
        finally:
            if learner is not None and learner.updates:
                save_model(loaded, save_to)
                fmt.tokenizer.save_pretrained(save_to)
                typer.echo(f"Saved the updated model to {save_to} ({learner.updates} update(s)).", err=True)


def _teach_interactively(model, fmt, learner, out: Path, facts: list[str], sampling, seed) -> None:
    import os

    from personagpt.data import ControlRecord
    from personagpt.generation import Conversation

    prompter = Prompter()
    bot = Conversation.with_action(model, fmt, DEFAULT_ACTIONS[0], facts, sampling=sampling, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    taught = 0
    while True:
        goal = _ask_action(prompter)
        if goal is None:
            break
        bot.set_action(goal, facts)
        history = list(bot.turns[-6:])
        typer.echo(f"Bot [{goal}]: {bot.respond()}")
        correction = prompter.ask(">> Enter to accept, or type a better turn: ")
        if correction is None:
            break
        if correction:
            bot.replace_last(correction)
        record = ControlRecord(goal=goal, history=history, response=bot.turns[-1], facts=list(facts))
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record.to_json()) + "\n")
            f.flush()
            os.fsync(f.fileno())
        taught += 1
        if learner is not None:
            before = learner.learn(record)
            bot.invalidate_cache()
            typer.echo(f"(learned; loss on that turn was {before:.3f})")
        if not _ask_message(prompter, bot):
            break
    typer.echo(f"{taught} example(s) saved to {out}.")


@app.command("eval")
def evaluate_models(
    model: Annotated[Optional[list[str]], typer.Option("--model", help="Model to evaluate (repeatable): checkpoint or adapter dir, hub id, smollm2-135m, or random:LAYERSxWIDTH for a random GPT-2 floor. Default: the bundled model.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="ConvAI2-format split (default: the Persona-Chat validation split).")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate only the first N dialogues (quick runs).")] = None,
    decode: Annotated[str, typer.Option(help="Decoding for F1 and distinct-n: greedy, sample or beam.")] = "greedy",
    metrics: Annotated[str, typer.Option(help="Comma-separated groups: ppl (perplexities, tf-F1), f1 (generation: F1, distinct-n), hits (persona identification), control (control success rate and its no-action base rate).")] = "ppl,f1,hits,control",
    distractors: Annotated[int, typer.Option(min=1, help="Distractor personas for Hits@1.")] = 19,
    hits_limit: Annotated[Optional[int], typer.Option(min=1, help="Rank personas for the first N dialogues only (Hits@1 costs 1 + --distractors teacher-forced passes); distractors still come from the whole split.")] = None,
    control_contexts: Annotated[int, typer.Option(min=1, help="Contexts (x 11 goals) for the control success rate.")] = 50,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Tokenizer for random:... models (default: the shared GPT-2 BPE files).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write all results as JSON here.")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the table as Markdown.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for distractors, control contexts, sampling.")] = 0,
    precision: Annotated[str, typer.Option(help="Matmul precision: auto (bf16 where the hardware is fast at it: 3-4x faster on an AMX CPU, perplexities within 0.1%), no (fp32), bf16 or fp16.")] = "auto",
    device: DeviceOpt = None,
) -> None:
    """Evaluate models on a Persona-Chat split and print one comparison row per model.

    Reports response perplexity per token, per word and as the original computed it, the original's teacher-forced token F1 (tf-F1), ConvAI2 word F1 of generated replies, distinct-1/2, persona identification Hits@1 (per response and per conversation, chance 5%) and the control success rate against its no-action base rate (contexts drawn from the evaluated dialogues). A model that fails to load gets an error row; the others still run (exit status 2 if none loads).
    """
    with _friendly_errors():
        from transformers import set_seed

        from personagpt.data import default_data_dir, load_dialogues
        from personagpt.evaluation import evaluate, markdown_table
        from personagpt.models import ModelNotFoundError

        if precision not in ("auto", "no", "bf16", "fp16"):
            raise UserError("--precision must be auto, no, bf16 or fp16")
        groups = [m.strip() for m in metrics.split(",") if m.strip()]
        unknown = set(groups) - {"ppl", "f1", "hits", "control"}
        if unknown or not groups:
            raise UserError(f"unknown metric group(s) {', '.join(sorted(unknown)) or '(none)'}; "
                            "use ppl, f1, hits, control")
        split = data or default_data_dir() / "personachat" / "valid_both_original_no_cands.txt"
        dialogues = load_dialogues(split)[:limit]
        names = model or [None]
        _quiet_transformers()
        rows = []

        def save() -> None:  # after every model, so an interrupted run keeps the rows it finished
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({"data": str(split), "dialogues": len(dialogues), "decode": decode,
                                           "rows": rows}, indent=1))

        for name in names:
            label = name or "bundled"
            try:
                loaded, fmt = _load_for_eval(name, device, tokenizer)
            except (ModelNotFoundError, ValueError, OSError) as e:
                typer.echo(f"Error: {label}: {e}", err=True)
                rows.append({"model": label, "error": str(e)})
                save()
                continue
            set_seed(seed)
            typer.echo(f"Evaluating {label} on {len(dialogues)} dialogues of {split} ...", err=True)
            rows.append({"model": label, **evaluate(loaded, fmt, dialogues, decode=decode, distractors=distractors,
                                                    batch_size=batch_size, seed=seed, metrics=groups,
                                                    control_contexts=control_contexts, precision=precision,
                                                    hits_dialogues=hits_limit)})
            del loaded
            save()
        if all("error" in r for r in rows):  # nothing to tabulate; the errors are printed above
            raise typer.Exit(2)
        if markdown:
            typer.echo(markdown_table(rows))
        else:
            _print_rich_table(markdown_table(rows))


def _load_for_eval(name: str | None, device: str | None, tokenizer: Path | None):
    """A model by name, or ``random:LAYERSxWIDTH``: a randomly initialised GPT-2 (the floor of the table)."""
    if name and name.startswith("random:"):
        from personagpt.data import default_data_dir
        from personagpt.format import PromptFormat
        from personagpt.models import build_gpt2, load_tokenizer
        from personagpt.training import _parse_shape

        layers, width = _parse_shape(name.split(":", 1)[1])
        tok = load_tokenizer(tokenizer or default_data_dir() / "tokenizer" / "gpt2")
        return build_gpt2(tok, n_layer=layers, n_embd=width, n_head=max(1, width // 64)).eval(), PromptFormat(tok)
    return _load(name, device)


def _print_rich_table(markdown_text: str) -> None:
    from rich.console import Console
    from rich.table import Table

    lines = markdown_text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = Table(*header)
    for line in lines[2:]:
        table.add_row(*[c.strip() for c in line.strip("|").split("|")])
    Console().print(table)


def _parse_action(text: str) -> str:
    text = text.strip()
    if text.isdigit():
        if int(text) >= len(DEFAULT_ACTIONS):
            raise UserError(f"unknown action index {text}; use 0-{len(DEFAULT_ACTIONS) - 1} or a free-text goal")
        return DEFAULT_ACTIONS[int(text)]
    if not text:
        raise UserError("an action must not be empty")
    return text


def _print_transcripts(transcripts) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for n, t in enumerate(transcripts, 1):
        table = Table(title=f"Conversation {n} — persona: {' '.join(t.p2_facts)}", show_lines=False)
        for column in ("Role", "Action", "Response"):
            table.add_column(column, overflow="fold")
        for text, action in zip(t.turns, t.actions):
            table.add_row("Interviewer" if action else "PersonaGPT", action or "-", text)
        console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
