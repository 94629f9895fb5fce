"""An interactive conversation (``python -m hrm.sample --chat``) that carries the recurrent state.

Turns use the dialogue template training uses for ``--data_path`` data (``hrm.chat_template.dialogue_prompt``:
each turn on its own line, the reply follows and ends at end-of-text). Each turn feeds only the new text on
top of the state after the previous reply, never the conversation again; the end-of-text token that closes a
reply is not fed (in training it starts a new document), the next turn continues after a newline instead.
"""

from __future__ import annotations

import dataclasses

from hrm.chat_template import dialogue_prompt
from hrm.decoding import TextStream
from hrm.inference import DecodeState, Sampling, SamplingArrays, SamplingError, kv_positions, row_key

HELP = (
    "commands: /temp T (0 is greedy), /top_p P, /top_k K, /tokens N (reply length), /reset (forget the "
    "conversation), /help, /quit"
)


class ChatSession:
    """A conversation with a loaded model (``hrm.load``): ``reply(text, on_text)`` streams the answer."""

    def __init__(self, model, sampling: Sampling, max_tokens: int = 150, seed: int = 0):
        self.model, self.sampling, self.max_tokens, self.seed = model, sampling.check(), max_tokens, seed
        self.reset()

    def reset(self) -> None:
        self.state: DecodeState | None = None
        self.turn = 0

    def reply(self, text: str, on_text=lambda piece: None) -> str:
        tokenizer, generator, params = self.model.tokenizer, self.model.generator, self.model.params
        ids = tokenizer.encode(("\n" if self.state is not None else "") + dialogue_prompt([text]))
        before = 0 if self.state is None else kv_positions(self.state)
        length = generator.cache_length(params, before + len(ids) + self.max_tokens)
        state = generator.start_rows(params, [ids], length, [row_key(self.seed, self.turn)], self.state)
        settings = SamplingArrays.of([self.sampling])
        stream = TextStream(tokenizer, eos_id=tokenizer.eos_id)
        for _ in range(self.max_tokens):
            tokens, next_state = generator.decode(params, state, settings, 1, keep_input=True)
            if piece := stream.add(tokens[0]):
                on_text(piece)
            if stream.finished:  # the end-of-text token: keep the state before it
                break
            state = next_state
        if piece := stream.flush():
            on_text(piece)
        self.state, self.turn = state, self.turn + 1
        return stream.text

    def command(self, line: str) -> str | None:
        """Apply a /command; returns the line to show, or None for /quit."""
        name, _, value = line.strip().partition(" ")
        settings = {"/temp": ("temperature", float), "/top_p": ("top_p", float), "/top_k": ("top_k", int)}
        try:
            if name == "/quit":
                return None
            if name == "/help":
                return HELP
            if name == "/reset":
                self.reset()
                return "conversation reset"
            if name == "/tokens":
                tokens = int(value)
                if tokens < 1:
                    raise SamplingError(f"/tokens must be >= 1, got {tokens}")
                self.max_tokens = tokens
                return f"replies up to {tokens} tokens"
            if name in settings:
                field, kind = settings[name]
                self.sampling = dataclasses.replace(self.sampling, **{field: kind(value)}).check()
                return f"{field} = {getattr(self.sampling, field)}"
        except ValueError as error:  # SamplingError included
            return f"error: {error if isinstance(error, SamplingError) else f'{name} needs a number'}"
        return f"unknown command {name}; {HELP}"


def run_chat(model, sampling: Sampling, max_tokens: int, seed: int, read=input, write=print) -> None:
    """The interactive loop over ``read`` (a prompt per line; EOF ends it) and ``write``."""
    session = ChatSession(model, sampling, max_tokens, seed)
    write(f"chat with step {model.step} of a {model.config.model.family} model; {HELP}")
    while True:
        try:
            line = read("> ")
        except EOFError:
            return
        if not line.strip():
            continue
        if line.startswith("/"):
            answer = session.command(line)
            if answer is None:
                return
            write(answer)
            continue
        session.reply(line, on_text=lambda piece: write(piece, end="", flush=True))
        write("")
