"""Synthetic edit requests for training tests: made-up people, two relations, one-token answers.

Each request has one rephrasing and no locality probe (the training loop then borrows another
request's prompt as the out-of-scope input). Training and held-out requests use different people.
"""
from __future__ import annotations

import random
from typing import List, Sequence

from sss import EditRequest

PEOPLE = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Isaac", "Jack", "Kevin", "Laura",
          "Maria", "Nancy", "Oscar", "Peter", "Quinn", "Robert", "Sarah", "Thomas", "Victor", "Walter", "Yvonne",
          "Zach", "Adam", "Brian", "Chris", "Daniel", "Eric", "Fiona")
ANSWERS = ("red", "blue", "green", "black", "white", "gold", "silver", "pink", "brown", "gray")
RELATIONS = (("The favourite colour of {} is", "{}'s favourite colour is"),
             ("The car that {} drives is", "{} drives a car that is"))


def synthetic_requests(people: Sequence[str], seed: int = 0) -> List[EditRequest]:
    rng = random.Random(seed)
    requests = []
    for person in people:
        for prompt, rephrasing in RELATIONS:
            requests.append(EditRequest(prompt.format(person), rng.choice(ANSWERS), subject=person,
                                        rephrase_prompts=(rephrasing.format(person),)))
    return requests


def train_and_heldout(seed: int = 0):
    """(training requests of 24 people, held-out requests of 6 others)."""
    return synthetic_requests(PEOPLE[:24], seed), synthetic_requests(PEOPLE[24:], seed + 1)
