"""Write the small AG News-style demo dataset (configs/data/agnews_demo/{train,test}.csv).

The rows are synthetic news items made from templates and per-topic vocabulary, in the AG News
CSV format (no header; `"label","headline","body"`; 1 World, 2 Sports, 3 Business, 4 Tech).
Running the script again reproduces the files byte for byte:

    python configs/data/make_agnews_demo.py [--out configs/data/agnews_demo]
"""

from __future__ import annotations

import argparse
import csv
import os
import random

SEED = 2024
TRAIN_PER_LABEL = 100
TEST_PER_LABEL = 50

AGENCIES = ["Reuters", "AP", "AFP", "Staff reports", "Wire services"]

WORLD = {
    "country": ["Kenya", "Peru", "Norway", "Vietnam", "Ukraine", "Chile", "Egypt", "Indonesia",
                "Poland", "Nigeria", "Mongolia", "Portugal", "Jordan", "Bolivia", "Finland",
                "Sri Lanka", "Ghana", "Georgia", "Nepal", "Tunisia"],
    "leader": ["the prime minister", "the president", "the foreign minister",
               "the opposition leader", "the defence minister", "the UN envoy",
               "the interior minister", "a senior diplomat"],
    "event": ["ceasefire talks", "a snap election", "a border dispute", "peace negotiations",
              "a refugee crisis", "a constitutional referendum", "mass protests",
              "a military standoff", "a humanitarian appeal", "a coalition collapse"],
    "body_fact": ["Thousands of people gathered in the capital", "Troops were placed on alert",
                  "Aid agencies warned of food shortages", "Diplomats met behind closed doors",
                  "Election monitors reported long queues at polling stations",
                  "The United Nations Security Council called an emergency session",
                  "Rebel groups rejected the proposal", "Neighbouring governments urged restraint",
                  "Parliament was suspended for a week", "Embassies advised citizens to leave"],
    "headline": ["{country} holds {event} as tensions rise",
                 "{Leader} of {country} calls for calm amid {event}",
                 "UN presses {country} over {event}",
                 "{country} opposition rejects results after {event}",
                 "Envoys arrive in {country} for {event}",
                 "Clashes reported in {country} during {event}"],
    "body": ["{agency} - {fact} on {day} as {leader} of {country} faced {event}. "
             "{fact2}, officials said.",
             "{agency} - {Leader} of {country} said on {day} that {event} would continue "
             "despite international pressure. {fact2}.",
             "{agency} - {fact}. The government of {country} blamed foreign interference for "
             "{event}, while {leader} appealed for dialogue."],
}

SPORTS = {
    "team": ["the Falcons", "Real Madrid", "the Yankees", "Manchester United", "the Lakers",
             "the All Blacks", "Bayern Munich", "the Red Sox", "the Steelers", "Ajax",
             "the Celtics", "Juventus", "the Broncos", "the Maple Leafs", "Celtic"],
    "athlete": ["the veteran striker", "the star quarterback", "the defending champion",
                "the young sprinter", "the team captain", "the world number one",
                "the rookie pitcher", "the goalkeeper"],
    "event": ["the championship final", "the playoff opener", "the semifinal",
              "the Olympic qualifier", "the title decider", "the season opener",
              "the derby", "the Grand Prix"],
    "result": ["scored twice in the second half", "threw three touchdown passes",
               "won in straight sets", "hit a late home run", "set a new course record",
               "saved a penalty in extra time", "finished with 31 points",
               "crossed the line first after a photo finish"],
    "headline": ["{Team} beat rivals in {event}", "{Athlete} leads {team} to victory",
                 "Coach praises {team} after {event}", "{Team} clinch spot in {event}",
                 "Injury blow for {team} ahead of {event}",
                 "{Team} rally late to win {event}"],
    "body": ["{agency} - {Athlete} {result} as {team} won {event} on {day}. The coach said "
             "the squad had trained hard all season.",
             "{agency} - {Team} {result2} and moved to the top of the league table after "
             "{event} on {day}, with fans celebrating in the stadium.",
             "{agency} - {Athlete} of {team} {result} in {event}. The win keeps their hopes "
             "of a title alive with two games left in the season."],
}

BUSINESS = {
    "company": ["Northwind Foods", "Globex", "Apex Motors", "Summit Bank", "Meridian Airlines",
                "Harbor Retail", "Crestline Energy", "Pioneer Steel", "BlueRiver Insurance",
                "Atlas Shipping", "Evergreen Pharma", "Keystone Mining"],
    "metric": ["quarterly profit", "annual revenue", "third-quarter earnings", "sales",
               "operating margin", "net income"],
    "move": ["rose 12 percent", "fell sharply", "beat analyst forecasts", "missed expectations",
             "doubled from a year earlier", "slipped for a second quarter"],
    "deal": ["a $2 billion takeover bid", "a merger with a smaller rival", "job cuts",
             "a share buyback", "plans to close three factories", "a debt refinancing"],
    "market": ["Shares", "Stocks on Wall Street", "The dollar", "Oil prices", "Bond yields",
               "European markets"],
    "headline": ["{Company} {metric} {move}", "{Company} announces {deal}",
                 "{Market} slide as investors weigh interest rates",
                 "Investors cheer {company} {metric}", "{Company} shares jump on {deal}",
                 "{Market} climb after central bank decision"],
    "body": ["{agency} - {Company} said on {day} that its {metric} {move}, sending its "
             "stock higher in early trading. Analysts expect further cost savings.",
             "{agency} - {Company} announced {deal} on {day}. The chief executive told "
             "investors the move would strengthen the balance sheet.",
             "{agency} - {Market} ended the week lower as traders worried about inflation "
             "and weak consumer spending; {company} reported that its {metric} {move}."],
}

TECH = {
    "company": ["Microsoft", "Google", "Apple", "IBM", "Intel", "Sony", "Nokia", "Oracle",
                "a Silicon Valley startup", "Samsung", "Yahoo", "Sun Microsystems"],
    "product": ["a new search engine", "a faster chip", "an operating system update",
                "a music download service", "a smartphone", "a web browser",
                "a cloud storage service", "a video game console", "a security patch",
                "open-source software"],
    "science": ["NASA", "European space scientists", "researchers", "astronomers",
                "a team of biologists"],
    "finding": ["discovered a new planet orbiting a distant star",
                "launched a probe toward Mars", "sequenced the genome of a rare plant",
                "built a robot that learns to walk", "found water ice on the Moon",
                "developed a battery that charges in minutes"],
    "headline": ["{Company} unveils {product}", "{Company} releases {product} for users",
                 "Hackers target flaw in {product}", "{Science} say they {finding}",
                 "{Company} to ship {product} next year",
                 "Software update fixes bug in {product}"],
    "body": ["{agency} - {Company} on {day} introduced {product}, saying it would make "
             "computers faster and the internet easier to search.",
             "{agency} - Security experts warned that a virus spreading through e-mail "
             "exploits a flaw in {product} from {company}; a patch is expected soon.",
             "{agency} - {Science} {finding}, according to a paper published on {day}. "
             "The software and data will be shared online with other scientists."],
}

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _world(rng: random.Random) -> tuple[str, str]:
    facts = rng.sample(WORLD["body_fact"], 2)
    slots = {"country": rng.choice(WORLD["country"]), "leader": rng.choice(WORLD["leader"]),
             "event": rng.choice(WORLD["event"]), "fact": facts[0], "fact2": facts[1]}
    return _fill(rng, WORLD, slots)


def _sports(rng: random.Random) -> tuple[str, str]:
    results = rng.sample(SPORTS["result"], 2)
    slots = {"team": rng.choice(SPORTS["team"]), "athlete": rng.choice(SPORTS["athlete"]),
             "event": rng.choice(SPORTS["event"]), "result": results[0], "result2": results[1]}
    return _fill(rng, SPORTS, slots)


def _business(rng: random.Random) -> tuple[str, str]:
    slots = {key: rng.choice(BUSINESS[key]) for key in ("company", "metric", "move", "deal",
                                                         "market")}
    return _fill(rng, BUSINESS, slots)


def _tech(rng: random.Random) -> tuple[str, str]:
    slots = {key: rng.choice(TECH[key]) for key in ("company", "product", "science", "finding")}
    return _fill(rng, TECH, slots)


def _fill(rng: random.Random, vocab: dict, slots: dict[str, str]) -> tuple[str, str]:
    slots = {**slots, "agency": rng.choice(AGENCIES), "day": rng.choice(DAYS)}
    slots.update({_cap(k): _cap(v) for k, v in list(slots.items())})
    headline = rng.choice(vocab["headline"]).format(**slots)
    body = rng.choice(vocab["body"]).format(**slots)
    return headline, body


MAKERS = {"1": _world, "2": _sports, "3": _business, "4": _tech}


def make_rows(rng: random.Random, per_label: int, seen: set[tuple[str, str]]) -> list[list[str]]:
    """`per_label` distinct rows for each label (distinct also from `seen`), shuffled."""
    rows = []
    for label, make in MAKERS.items():
        count = 0
        while count < per_label:
            headline, body = make(rng)
            if (headline, body) in seen:
                continue
            seen.add((headline, body))
            rows.append([label, headline, body])
            count += 1
    rng.shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "agnews_demo"))
    args = parser.parse_args()
    rng = random.Random(SEED)
    seen: set[tuple[str, str]] = set()
    splits = {"train.csv": make_rows(rng, TRAIN_PER_LABEL, seen),
              "test.csv": make_rows(rng, TEST_PER_LABEL, seen)}
    os.makedirs(args.out, exist_ok=True)
    for name, rows in splits.items():
        with open(os.path.join(args.out, name), "w", encoding="utf-8", newline="") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
        print(f"wrote {len(rows)} rows to {os.path.join(args.out, name)}")


if __name__ == "__main__":
    main()
