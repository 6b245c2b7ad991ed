"""Rules every conversation must follow, whatever format it came in.

Gemma 3's chat template folds a system message into the first user turn and needs user and
assistant turns to alternate; training needs an assistant turn to learn from at the end.
A preference pair is a prompt that ends with a user turn and two different one-message
assistant replies; prompt plus either reply must then be a valid conversation. A reinforcement
prompt also ends with a user turn, and is otherwise held to the rules of any conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gemlora.data.example import ImagePart, Issue, Message, TextPart

if TYPE_CHECKING:
    from gemlora.data.formats.common import Draft, PreferenceDraft

# Text containing these would be read as chat structure rather than as text.
CONTROL_TOKENS = (
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
    "<bos>",
    "<eos>",
    "<pad>",
)


@dataclass(frozen=True)
class MessageFields:
    """Where a message's role and content are in the source record, for problem reports
    (ShareGPT keeps them in `conversations[i].from` and `.value`)."""

    role: str
    content: str

    @classmethod
    def of(cls, index: int, container: str = "messages") -> MessageFields:
        return cls(f"{container}[{index}].role", f"{container}[{index}].content")


def check_messages(
    messages: Sequence[Message],
    fields: Sequence[MessageFields] | None = None,
    *,
    require_assistant_last: bool = True,
    container: str = "messages",
) -> list[Issue]:
    """Every rule broken, each naming its field. `fields[i]` locates message i in the record;
    `container` names the record's list of turns."""
    if not messages:
        return [Issue(container, "no messages")]
    fields = fields or [MessageFields.of(i) for i in range(len(messages))]
    issues = _check_conversation(messages, fields, require_assistant_last, container)
    assistants = [m for m in messages if m.role == "assistant"]
    if assistants and not any(m.weight for m in assistants):
        issues.append(Issue(container, "every assistant turn has weight 0: nothing to train on"))
    return issues


def check_preference(draft: PreferenceDraft) -> list[Issue]:
    """Every rule a preference pair breaks, each naming its field. The shape comes first (a
    prompt ending with a user turn, one assistant message per reply); only a pair of that shape
    is checked as conversations, so one misplaced turn gives one error."""
    issues = _check_prompt_shape(
        draft.prompt, "a preference prompt must end with a user turn, not {role}"
    )
    issues += _check_reply_shape(draft.chosen) + _check_reply_shape(draft.rejected)
    if issues:
        return issues
    prompt, chosen, rejected = draft.prompt, draft.chosen, draft.rejected
    # Prompt + chosen is checked as one SFT conversation (roles, content, control tokens); the
    # prompt is not checked again with the rejected reply, only the reply itself.
    issues = check_messages(
        [*prompt.messages, *chosen.messages],
        [*prompt.message_fields, *chosen.message_fields],
        container=prompt.container,
    )
    issues += _check_content(rejected.messages[0], rejected.message_fields[0].content)
    if not issues and chosen.messages[0].content == rejected.messages[0].content:
        issues.append(Issue(rejected.container, "the rejected reply is the same as the chosen one"))
    return issues


def check_prompt(prompt: Draft) -> list[Issue]:
    """Every rule a reinforcement prompt breaks, each naming its field: the shape first (it
    ends with a user turn), then the rules of any conversation. Weights are not checked: nothing
    in a prompt is trained on."""
    issues = _check_prompt_shape(
        prompt, "a reinforcement prompt ends with a user turn: the model writes the reply"
    )
    if issues:
        return issues
    return _check_conversation(
        prompt.messages,
        prompt.message_fields,
        require_assistant_last=False,
        container=prompt.container,
    )


def _check_prompt_shape(prompt: Draft, rule: str) -> list[Issue]:
    """A prompt has messages and ends with a user turn; `rule` says so when it does not, with
    `{role}` standing for the last message's role."""
    if not prompt.messages:
        return [Issue(prompt.container, "no messages")]
    last = prompt.messages[-1]
    if last.role != "user":
        return [Issue(prompt.message_fields[-1].role, rule.format(role=last.role))]
    return []


def _check_reply_shape(reply: Draft) -> list[Issue]:
    if len(reply.messages) != 1:
        return [
            Issue(
                reply.container,
                f"expected one assistant message as the reply, got {len(reply.messages)}",
            )
        ]
    [message] = reply.messages
    if message.role != "assistant":
        return [
            Issue(
                reply.message_fields[0].role,
                f"a reply must be an assistant message, not {message.role}",
            )
        ]
    return []


def _check_conversation(
    messages: Sequence[Message],
    fields: Sequence[MessageFields],
    require_assistant_last: bool,
    container: str,
) -> list[Issue]:
    """The roles' order, then each message's content."""
    issues = _check_roles(messages, fields, require_assistant_last, container)
    for message, where in zip(messages, fields, strict=True):
        issues += _check_content(message, where.content)
    return issues


def _check_roles(
    messages: Sequence[Message],
    fields: Sequence[MessageFields],
    require_assistant_last: bool,
    container: str,
) -> list[Issue]:
    issues = [
        Issue(fields[i].role, "a system message is only allowed as the first message")
        for i, m in enumerate(messages)
        if m.role == "system" and i > 0
    ]
    turns = [(i, m) for i, m in enumerate(messages) if m.role != "system"]
    if not turns:
        return [*issues, Issue(container, "no user or assistant turns")]
    for position, (index, message) in enumerate(turns):
        expected = "user" if position % 2 == 0 else "assistant"
        if message.role != expected:
            issues.append(
                Issue(
                    fields[index].role,
                    f"expected {expected}, got {message.role}: turns must alternate "
                    "user/assistant, starting with user",
                )
            )
            return issues
    last_index, last = turns[-1]
    if require_assistant_last and last.role != "assistant":
        issues.append(
            Issue(
                fields[last_index].role,
                f"a training example must end with an assistant turn, not {last.role}",
            )
        )
    return issues


def _check_content(message: Message, field: str) -> list[Issue]:
    if not message.content:
        return [Issue(field, "empty content")]
    issues = []
    if message.role != "user" and any(isinstance(p, ImagePart) for p in message.content):
        issues.append(Issue(field, f"images are only allowed in user messages, not {message.role}"))
    for part in message.content:
        if isinstance(part, TextPart):
            found = [token for token in CONTROL_TOKENS if token in part.text]
            if found:
                issues.append(
                    Issue(
                        field,
                        f"text contains the control token {found[0]}, which the model would "
                        "read as chat structure",
                    )
                )
    return issues
