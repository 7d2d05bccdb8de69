"""The Llama 2 chat format of Meta's ``generation.py``: [INST] turns, a <<SYS>> system prompt."""

from __future__ import annotations

from ..errors import TokenizerError

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
CHAT_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")


class ChatMixin:
    """``apply_chat_template`` for Llama 2 chat models."""

    def apply_chat_template(self, messages: list[dict], tokenize: bool = True):
        """The Llama 2 chat format of Meta's ``generation.py``.

        messages: an optional {"role": "system"} first, then alternating "user" and
        "assistant" turns. Each user/assistant exchange is encoded on its own as
        BOS + "[INST] {user} [/INST] {answer} " + EOS; an unanswered last user turn as
        BOS + "[INST] {user} [/INST]", the prompt to generate from. The system prompt
        is wrapped in <<SYS>> tags inside the first user turn.
        Returns ids, or with tokenize=False the same conversation as text, with "<s>" and
        "</s>" standing for BOS and EOS (encoding that text again does not give the ids:
        in sentencepiece "<s>" is text, and each turn gets its own dummy prefix).
        """
        turns = _chat_turns(messages)
        ids, text = [], ""
        for user, answer in turns:
            if answer is None:
                body = f"{B_INST} {user.strip()} {E_INST}"
                ids += self.encode(body, bos=True, eos=False)
                text += self.bos_token + body
            else:
                body = f"{B_INST} {user.strip()} {E_INST} {answer.strip()} "
                ids += self.encode(body, bos=True, eos=True)
                text += self.bos_token + body + self.eos_token
        return ids if tokenize else text


def _chat_turns(messages) -> list[tuple[str, str | None]]:
    """Check a conversation and pair it into (user, answer-or-None) turns, the system prompt folded in."""
    if not messages:
        raise TokenizerError("a chat needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ("system", "user", "assistant"):
            raise TokenizerError(f"message {i} must be a dict with role system/user/assistant and str content, got {m!r}")
        for tag in CHAT_TAGS:
            if tag in m["content"]:
                raise TokenizerError(f"message {i} contains the chat tag {tag!r}, which would break the format")
    messages = list(messages)
    if messages[0]["role"] == "system":
        if len(messages) < 2:
            raise TokenizerError("a system prompt must be followed by a user message")
        system = messages[0]["content"]
        messages = [{"role": messages[1]["role"], "content": B_SYS + system + E_SYS + messages[1]["content"]}] + messages[2:]
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise TokenizerError(f"chat roles must alternate user/assistant (after an optional system), "
                                 f"but turn {i} is {m['role']!r}")
    users, answers = messages[0::2], messages[1::2]
    return [(u["content"], answers[i]["content"] if i < len(answers) else None) for i, u in enumerate(users)]
