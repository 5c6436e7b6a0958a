import datasets
import pytest

TEXTS = [
    ("Sort these numbers: 3 1 2", "1 2 3", "3 2 1"),
    ("List the fruit in order.", "apple, banana, cherry", "banana apple"),
    ("Answer the question briefly.", "The answer is 10.", "I do not know the answer to this."),
    ("Write a short answer.", "A short answer.", "A long and rambling answer that goes on."),
    ("Explain your reasoning.", "First sort, then list.", "Because."),
    ("What is the quick brown fox?", "The quick brown fox jumps over the lazy dog.", "a dog"),
    ("Score this on a scale of 1 to 10.", "Overall score: 8.", "10 10 10 10"),
    ("Sort: 9 2 6", "2 6 9", "9 6 2 2"),
]
SCORES = [(9.0, 2.0), (7.0, 6.0), (8.0, 3.0), (5.0, 4.5), (6.0, 1.0), (9.5, 9.0), (4.0, 2.0), (8.0, 1.0)]


@pytest.fixture()
def pairs():
    return datasets.Dataset.from_list([
        {"prompt": p, "chosen": c, "rejected": r, "score_chosen": sc, "score_rejected": sr, "pair_id": f"p{i}"}
        for i, ((p, c, r), (sc, sr)) in enumerate(zip(TEXTS, SCORES))
    ])
