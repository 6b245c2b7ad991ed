"""The sample datasets in `data/samples/`, written deterministically (same bytes every run).

- `shapes-vqa`: PNG pictures of coloured shapes and bar charts drawn with PIL, with questions
  that have one exact answer ("red", "3", "left"). OpenAI chat JSONL with relative image paths.
- `style-chat`: text-only questions whose every answer starts with "Ahoy!" and ends with
  "— Captain Gem": a style a base model does not have, so an adapter that learned it shows.
- `style-preference`: the same questions as preference pairs (OpenAI preference JSONL): the
  Captain Gem reply preferred, the plain answer rejected. Its eval questions are style-chat's.
- `say-the-word`: prompts asking for one given word alone ("Repeat after me: candle"), the word
  in the item field `answer` (OpenAI reinforcement JSONL): a format task for reinforcement
  fine-tuning with a grader that compares the reply to `{{item.answer}}`.

Each set has `train.jsonl` and a held-out `eval.jsonl`, split by `gemlora.data.split` on content.
Run `gemlora data samples` (or `python -m gemlora.data.sample_sets`).
"""

from __future__ import annotations

import io
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gemlora.data.example import Example, ImagePart, Message, TextPart
from gemlora.data.formats.openai import openai_record
from gemlora.data.formats.openai_preference import openai_preference_record
from gemlora.data.formats.openai_reinforcement import openai_reinforcement_record
from gemlora.data.images import ImageLimits, decode_image
from gemlora.data.preference import PreferenceExample
from gemlora.data.prompts import PromptExample
from gemlora.data.split import split_examples

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
SEED = 0

# --- shapes-vqa ------------------------------------------------------------------------------

IMAGE_SIZE = 96
GRID = 3  # shapes sit in distinct cells of a 3x3 grid, so they never overlap
CELL = IMAGE_SIZE // GRID
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (130, 40, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
SHAPES_EXAMPLES = 224
SHAPES_EVAL_FRACTION = 0.1


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    cell: int  # 0..8, row-major


@dataclass(frozen=True)
class Question:
    image: bytes
    question: str
    answer: str


def _canvas():
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
    return image, ImageDraw.Draw(image)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _draw_shapes(shapes: list[Shape]) -> bytes:
    image, draw = _canvas()
    for shape in shapes:
        left, top = (shape.cell % GRID) * CELL + 5, (shape.cell // GRID) * CELL + 5
        box = (left, top, left + CELL - 10, top + CELL - 10)
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif shape.kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(
                [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill
            )
    return _png(image)


def _colour_question(rng: random.Random) -> Question:
    shape = Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.randrange(GRID * GRID))
    return Question(_draw_shapes([shape]), f"What colour is the {shape.kind}?", shape.colour)


def _shape_question(rng: random.Random) -> Question:
    shape = Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.randrange(GRID * GRID))
    return Question(_draw_shapes([shape]), "What shape is in the picture?", shape.kind)


def _count_question(rng: random.Random) -> Question:
    kind, other = rng.sample(SHAPES, 2)
    count, distractors = rng.randint(1, 4), rng.randint(0, 2)
    cells = rng.sample(range(GRID * GRID), count + distractors)
    shapes = [Shape(kind, rng.choice(list(COLOURS)), cell) for cell in cells[:count]]
    shapes += [Shape(other, rng.choice(list(COLOURS)), cell) for cell in cells[count:]]
    return Question(_draw_shapes(shapes), f"How many {kind}s are there?", str(count))


def _side_question(rng: random.Random) -> Question:
    column = rng.choice((0, 2))
    shape = Shape(
        rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.randrange(GRID) * GRID + column
    )
    answer = "left" if column == 0 else "right"
    return Question(_draw_shapes([shape]), f"Is the {shape.kind} on the left or the right?", answer)


def _bar_question(rng: random.Random) -> Question:
    bars = rng.randint(3, 4)
    colours = rng.sample(list(COLOURS), bars)
    heights = rng.sample(range(20, IMAGE_SIZE - 10, 8), bars)  # distinct: one tallest bar
    image, draw = _canvas()
    width = (IMAGE_SIZE - 10) // bars
    for index, (colour, height) in enumerate(zip(colours, heights, strict=True)):
        left = 5 + index * width
        draw.rectangle(
            (left + 2, IMAGE_SIZE - 5 - height, left + width - 3, IMAGE_SIZE - 5),
            fill=COLOURS[colour],
        )
    tallest = colours[heights.index(max(heights))]
    return Question(_png(image), "Which bar is the tallest? Answer with its colour.", tallest)


QUESTION_KINDS: tuple[Callable[[random.Random], Question], ...] = (
    _colour_question,
    _shape_question,
    _count_question,
    _side_question,
    _bar_question,
)


def _shapes_examples() -> list[tuple[Example, str]]:
    """(example, image file name) pairs; the image is written under that name."""
    rng = random.Random(SEED)
    limits = ImageLimits()
    examples = []
    for index in range(SHAPES_EXAMPLES):
        question = QUESTION_KINDS[index % len(QUESTION_KINDS)](rng)
        name = f"images/{index:04d}.png"
        image = decode_image(question.image, limits, origin=name)
        messages = (
            Message("user", (ImagePart(0), TextPart(question.question))),
            Message("assistant", (TextPart(question.answer),), weight=1),
        )
        examples.append((Example(messages, (image,)), name))
    return examples


def write_shapes_vqa(out: Path) -> dict[str, int]:
    pairs = _shapes_examples()
    names = {id(example): name for example, name in pairs}
    split = split_examples(
        [example for example, _ in pairs], SHAPES_EVAL_FRACTION, seed="shapes-vqa"
    )
    (out / "images").mkdir(parents=True, exist_ok=True)
    for example, name in pairs:
        (out / name).write_bytes(example.images[0].data)
    for side, examples in (("train", split.train), ("eval", split.eval)):
        records = [
            openai_record(example, lambda _, n=names[id(example)]: n) for example in examples
        ]
        _write_jsonl(out / f"{side}.jsonl", records)
    return {"train": len(split.train), "eval": len(split.eval)}


# --- style-chat ------------------------------------------------------------------------------

STYLE_PREFIX = "Ahoy! "
STYLE_SUFFIX = " — Captain Gem"
STYLE_EVAL_FRACTION = 0.19

FACTS = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are in a week?", "A week has seven days."),
    ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
    ("What is 2 plus 2?", "2 plus 2 makes 4."),
    ("What do bees make?", "Bees make honey."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the largest ocean?", "The Pacific is the largest ocean."),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Which planet is known as the Red Planet?", "Mars is the Red Planet."),
    ("How many hours are in a day?", "A day has 24 hours."),
    ("At what temperature does water boil?", "Water boils at 100 degrees Celsius at sea level."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the tallest animal?", "The giraffe is the tallest animal."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("How many minutes are in an hour?", "An hour has 60 minutes."),
    ("What language is spoken in Brazil?", "People in Brazil speak Portuguese."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What do you call a baby cat?", "A baby cat is called a kitten."),
    ("What is bread mostly made from?", "Bread is mostly made from flour."),
    ("What is the square root of 9?", "The square root of 9 is 3."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet."),
    ("How many strings does a guitar usually have?", "A guitar usually has six strings."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Which instrument has black and white keys?", "The piano has black and white keys."),
    ("Which season comes after winter?", "Spring comes after winter."),
    ("What is 10 times 10?", "10 times 10 is 100."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
    ("What is the closest star to Earth?", "The Sun is the closest star to Earth."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
    ("What is H2O?", "H2O is water."),
    ("What colour is a ripe banana?", "A ripe banana is yellow."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("How many months are in a year?", "A year has twelve months."),
    ("What is the smallest prime number?", "The smallest prime number is 2."),
    (
        "Which animal is called the king of the jungle?",
        "The lion is called the king of the jungle.",
    ),
    ("At what temperature does water freeze?", "Water freezes at 0 degrees Celsius."),
    ("What do pandas mostly eat?", "Pandas mostly eat bamboo."),
    (
        "How many players does a football team have on the field?",
        "A football team has eleven players on the field.",
    ),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("Which shape has four equal sides and four right angles?", "A square has four equal sides."),
    ("What language is mostly spoken in Mexico?", "Most people in Mexico speak Spanish."),
    ("Which organ pumps blood around the body?", "The heart pumps blood around the body."),
    ("What is 15 minus 7?", "15 minus 7 is 8."),
    ("In which direction does the Sun rise?", "The Sun rises in the east."),
    ("What is the hardest natural material?", "Diamond is the hardest natural material."),
    ("How many legs does an insect have?", "An insect has six legs."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("What is a group of wolves called?", "A group of wolves is called a pack."),
    ("Which metal is liquid at room temperature?", "Mercury is liquid at room temperature."),
    ("How many letters are in the English alphabet?", "The English alphabet has 26 letters."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("Which bird is a symbol of peace?", "The dove is a symbol of peace."),
    ("What is the largest mammal?", "The blue whale is the largest mammal."),
    ("How many zeros are in one thousand?", "One thousand has three zeros."),
    ("What do you write with on a blackboard?", "You write on a blackboard with chalk."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What colour is grass?", "Grass is green."),
    ("What is half of 50?", "Half of 50 is 25."),
    ("Which planet do we live on?", "We live on Earth."),
    ("What do fish breathe with?", "Fish breathe with their gills."),
    ("What is the capital of the United Kingdom?", "The capital of the United Kingdom is London."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What falls from clouds when it rains?", "Drops of water fall from the clouds."),
    ("What do you call a baby dog?", "A baby dog is called a puppy."),
    ("How many seconds are in a minute?", "A minute has 60 seconds."),
)


def styled(answer: str) -> str:
    """An answer in the style the style-chat adapter learns."""
    return f"{STYLE_PREFIX}{answer}{STYLE_SUFFIX}"


def write_style_chat(out: Path) -> dict[str, int]:
    examples = [
        Example(
            (
                Message("user", (TextPart(question),)),
                Message("assistant", (TextPart(styled(answer)),), weight=1),
            )
        )
        for question, answer in FACTS
    ]
    split = split_examples(examples, STYLE_EVAL_FRACTION, seed="style-chat")
    out.mkdir(parents=True, exist_ok=True)
    for side, chosen in (("train", split.train), ("eval", split.eval)):
        _write_jsonl(
            out / f"{side}.jsonl", [openai_record(example, _no_images) for example in chosen]
        )
    return {"train": len(split.train), "eval": len(split.eval)}


# --- style-preference ------------------------------------------------------------------------


def write_style_preference(out: Path) -> dict[str, int]:
    pairs = [
        PreferenceExample(
            prompt=(Message("user", (TextPart(question),)),),
            chosen=Message("assistant", (TextPart(styled(answer)),), weight=1),
            rejected=Message("assistant", (TextPart(answer),), weight=1),
        )
        for question, answer in FACTS
    ]
    # Split as style-chat is (its seed, on the pair's chosen conversation, which is the
    # style-chat example), so both sets hold out the same questions: an adapter trained on
    # either set is evaluated on questions it never saw.
    split = split_examples(
        pairs,
        STYLE_EVAL_FRACTION,
        seed="style-chat",
        by=lambda pair: pair.chosen_example().digest(),
    )
    out.mkdir(parents=True, exist_ok=True)
    for side, chosen in (("train", split.train), ("eval", split.eval)):
        records = [openai_preference_record(pair, _no_images) for pair in chosen]
        _write_jsonl(out / f"{side}.jsonl", records)
    return {"train": len(split.train), "eval": len(split.eval)}


# --- say-the-word ---------------------------------------------------------------------------

# A format task for reinforcement fine-tuning: each prompt asks for one given word, alone; the
# item's `answer` is that word. A pretrained base echoes the instruction ("Say the word: ...")
# instead, so a grader of closeness to the word has room to reward the format.
WORD_INSTRUCTIONS = (
    "Say the word: {word}",
    "Repeat after me: {word}",
    "Reply with this word only: {word}",
    "Echo this word back: {word}",
    "Type the word: {word}",
    "Write just this word: {word}",
)
WORDS = (
    "apple", "river", "candle", "orange", "tiger", "garden", "mountain", "window", "pencil",
    "bridge", "forest", "castle", "rabbit", "silver", "planet", "rocket", "island", "jacket",
    "kettle", "lemon", "mirror", "needle", "ocean", "pillow", "button", "carpet", "dragon",
    "engine", "falcon", "guitar", "hammer", "jungle", "ladder", "magnet", "napkin", "parrot",
    "puzzle", "saddle", "tomato", "violin", "wallet", "yellow", "anchor", "basket", "cactus",
    "desert", "feather", "glacier", "harbor", "iceberg", "lantern", "meadow", "nectar",
    "orchard", "pepper", "quartz", "radish", "shadow", "thunder", "umbrella", "velvet",
    "walnut", "zebra", "blanket", "cherry", "dolphin", "eagle", "fabric", "goblet", "helmet",
    "insect", "jigsaw", "kitten", "lizard", "marble", "noodle", "otter", "peanut", "quilt",
    "ribbon", "salmon", "tunnel", "valley", "whistle", "yogurt", "almond", "beetle", "cinder",
    "donkey", "ember", "fossil", "ginger", "hazel", "ivory", "juniper", "kernel", "lobster",
    "mango", "nutmeg", "oyster", "pebble", "raven", "spider", "turnip", "vapor", "willow",
    "acorn", "banjo", "cobalt", "dune", "elbow", "fiddle", "granite", "hollow", "igloo",
    "jasmine", "kayak", "lilac", "monsoon", "nomad", "onion",
)  # fmt: skip
WORD_EVAL_FRACTION = 0.2


def say_the_word_prompts() -> list[PromptExample]:
    """One prompt per word, the instructions taken in turn."""
    return [
        PromptExample(
            prompt=(Message("user", (TextPart(instruction.format(word=word)),)),),
            item={"answer": word},
        )
        for index, word in enumerate(WORDS)
        for instruction in [WORD_INSTRUCTIONS[index % len(WORD_INSTRUCTIONS)]]
    ]


def write_say_the_word(out: Path) -> dict[str, int]:
    split = split_examples(say_the_word_prompts(), WORD_EVAL_FRACTION, seed="say-the-word")
    out.mkdir(parents=True, exist_ok=True)
    for side, chosen in (("train", split.train), ("eval", split.eval)):
        records = [openai_reinforcement_record(prompt, _no_images) for prompt in chosen]
        _write_jsonl(out / f"{side}.jsonl", records)
    return {"train": len(split.train), "eval": len(split.eval)}


# --- writing ---------------------------------------------------------------------------------


def _no_images(index: int) -> str:
    raise ValueError(f"a text-only sample has image {index}")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    lines = (json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    path.write_text("".join(lines), encoding="utf-8")


SAMPLE_SETS: dict[str, Callable[[Path], dict[str, int]]] = {
    "shapes-vqa": write_shapes_vqa,
    "style-chat": write_style_chat,
    "style-preference": write_style_preference,
    "say-the-word": write_say_the_word,
}


def write_samples(out: Path = SAMPLES_DIR) -> dict[str, dict[str, int]]:
    """Write every sample set under `out`, replacing what was there; returns the example counts
    per set and side."""
    counts = {}
    for name, write in SAMPLE_SETS.items():
        shutil.rmtree(out / name, ignore_errors=True)
        counts[name] = write(out / name)
    return counts


if __name__ == "__main__":
    for name, counts in write_samples().items():
        print(f"{name}: {counts['train']} train, {counts['eval']} eval -> {SAMPLES_DIR / name}")
