"""The dialogue template, one home for the three places that use it: training's ``--data_path`` dialogue
documents (``hrm.data.sources``), the interactive chat (``hrm.chat``) and the server's chat completions
(``hrm.serving.app``), so that a model is prompted as it was trained."""


def dialogue_prompt(turns: list[str]) -> str:
    """Each context turn on its own line; the response follows (then end-of-text)."""
    return "".join(turn + "\n" for turn in turns)
