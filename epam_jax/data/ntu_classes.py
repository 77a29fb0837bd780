"""Action names of NTU RGB+D 60 and 120 (classes A1..A120 of the dataset's published list).

Label index i (0-based, as in PoseC3D annotations) is action A(i+1). NTU-60 is the first
60 of these. Spelling follows the dataset's list (including its "hush (quite)").
"""

from __future__ import annotations

from collections.abc import Sequence

NTU120_CLASSES: tuple[str, ...] = (
    "drink water",  # A1
    "eat meal/snack",
    "brushing teeth",
    "brushing hair",
    "drop",  # A5
    "pickup",
    "throw",
    "sitting down",
    "standing up (from sitting position)",
    "clapping",  # A10
    "reading",
    "writing",
    "tear up paper",
    "wear jacket",
    "take off jacket",  # A15
    "wear a shoe",
    "take off a shoe",
    "wear on glasses",
    "take off glasses",
    "put on a hat/cap",  # A20
    "take off a hat/cap",
    "cheer up",
    "hand waving",
    "kicking something",
    "reach into pocket",  # A25
    "hopping (one foot jumping)",
    "jump up",
    "make a phone call/answer phone",
    "playing with phone/tablet",
    "typing on a keyboard",  # A30
    "pointing to something with finger",
    "taking a selfie",
    "check time (from watch)",
    "rub two hands together",
    "nod head/bow",  # A35
    "shake head",
    "wipe face",
    "salute",
    "put the palms together",
    "cross hands in front (say stop)",  # A40
    "sneeze/cough",
    "staggering",
    "falling",
    "touch head (headache)",
    "touch chest (stomachache/heart pain)",  # A45
    "touch back (backache)",
    "touch neck (neckache)",
    "nausea or vomiting condition",
    "use a fan (with hand or paper)/feeling warm",
    "punching/slapping other person",  # A50
    "kicking other person",
    "pushing other person",
    "pat on back of other person",
    "point finger at the other person",
    "hugging other person",  # A55
    "giving something to other person",
    "touch other person's pocket",
    "handshaking",
    "walking towards each other",
    "walking apart from each other",  # A60
    "put on headphone",
    "take off headphone",
    "shoot at the basket",
    "bounce ball",
    "tennis bat swing",  # A65
    "juggling table tennis balls",
    "hush (quite)",
    "flick hair",
    "thumb up",
    "thumb down",  # A70
    "make ok sign",
    "make victory sign",
    "staple book",
    "counting money",
    "cutting nails",  # A75
    "cutting paper (using scissors)",
    "snapping fingers",
    "open bottle",
    "sniff (smell)",
    "squat down",  # A80
    "toss a coin",
    "fold paper",
    "ball up paper",
    "play magic cube",
    "apply cream on face",  # A85
    "apply cream on hand back",
    "put on bag",
    "take off bag",
    "put something into a bag",
    "take something out of a bag",  # A90
    "open a box",
    "move heavy objects",
    "shake fist",
    "throw up cap/hat",
    "hands up (both hands)",  # A95
    "cross arms",
    "arm circles",
    "arm swings",
    "running on the spot",
    "butt kicks (kick backward)",  # A100
    "cross toe touch",
    "side kick",
    "yawn",
    "stretch oneself",
    "blow nose",  # A105
    "hit other person with something",
    "wield knife towards other person",
    "knock over other person (hit with body)",
    "grab other person's stuff",
    "shoot at other person with a gun",  # A110
    "step on foot",
    "high-five",
    "cheers and drink",
    "carry something with other person",
    "take a photo of other person",  # A115
    "follow other person",
    "whisper in other person's ear",
    "exchange things with other person",
    "support somebody with hand",
    "finger-guessing game (playing rock-paper-scissors)",  # A120
)
NTU60_CLASSES: tuple[str, ...] = NTU120_CLASSES[:60]


def class_names(num_classes: int, names: Sequence[str] | None = None) -> list[str]:
    """Names for a classifier of ``num_classes`` outputs.

    ``names`` (e.g. read from a file) wins and must have one entry per class; otherwise 60
    and 120 classes get the NTU names ("A1 drink water", ...) and other counts "class i".
    """
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != num_classes:
            raise ValueError(
                f"expected {num_classes} class names (one per model output), got {len(names)}"
            )
        return names
    if num_classes in (60, 120):
        return [f"A{i + 1} {n}" for i, n in enumerate(NTU120_CLASSES[:num_classes])]
    return [f"class {i}" for i in range(num_classes)]
