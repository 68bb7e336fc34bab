"""method "evaluate": scores a finished run's saved models on the task's eval set, without training.

`python train.py --config RUN.yaml method=evaluate [evaluate.run_dir=RUN_DIR]` loads every model
the run saved (jaxpet.pipelines.model_saving: `p*-s*/model`, `g*/p*-s*/model`, `distilled/model`,
`sc-s*/model`), scores the config's task and eval_set through the pipeline's own evaluation
(jaxpet.pipelines.member.evaluate_member, jaxpet.pipelines.distill.evaluate_classifier), merges
the members as the run merged them (its pet.reduction and members' wmean weights), and writes the
run's layout of results.json, summary.md, member folders with eval_logits.npy and
predictions.jsonl into its own folder: `output_dir`, or `<output_dir>/evaluate` when the run
folder is output_dir itself.
Each member is scored with its run's settings (its jaxpet.json config: pattern, verbalizer,
lengths, decoding, dtype); the config given names the data, eval batch size and mesh.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh
from omegaconf import OmegaConf

from jaxpet.config import Config, ConfigError, load_config, merge_config, to_yaml
from jaxpet.config.load import fill_unread
from jaxpet.engine.compilation_cache import enable_compilation_cache
from jaxpet.engine.sharding import build_mesh
from jaxpet.pipelines import distill, member
from jaxpet.pipelines.setup import TaskData, load_model, load_task_data
from jaxpet.runs import fingerprint, outputs
from jaxpet.runs.lock import RunLock
from jaxpet.runs.outputs import check_output_dir
from jaxpet.runs.report import write_report
from jaxpet.runs.saved_model import is_saved_model, read_card

MEMBER = re.compile(r"p\d+-s\d+")
GENERATION = re.compile(r"g\d+")


def folders(config: Config) -> tuple[Path, Path]:
    """(the run folder whose models are scored, the folder the evaluation writes)."""
    out = Path(config.output_dir)
    run = Path(config.evaluate.run_dir) if config.evaluate.run_dir else out
    if run.resolve() == out.resolve():
        return run, out / "evaluate"
    return run, out


def run_config(run: Path) -> Config:
    """The resolved config that the run stored in its folder."""

    if not run.is_dir():
        raise ConfigError(f"config key 'evaluate.run_dir' ({run}): no such run folder")
    path = run / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run}: no config.yaml; evaluate.run_dir must name the output_dir of "
                          "a finished PET, iPET or sequence_classifier run")
    return load_config(path)


def saved_members(stage: Path) -> list[str]:
    """The member folders of one ensemble stage whose model was saved, sorted by name."""
    return sorted(m.name for m in stage.iterdir()
                  if MEMBER.fullmatch(m.name) and is_saved_model(m / "model"))


def stages(run: Path, method: str) -> list[str]:
    """The run's ensemble stages, relative to it: "" (PET) or g0, g1, ... (iPET)."""
    if method != "ipet":
        return [""]
    found = [g.name for g in run.iterdir() if GENERATION.fullmatch(g.name) and g.is_dir()]
    return sorted(found, key=lambda name: int(name[1:]))


def member_config(config: Config, card: Any, folder: Path) -> Config:
    """The run's config from the member's card, with the data, eval batch size and mesh of
    the evaluation's `config`."""
    merged = merge_config(OmegaConf.structured(Config), OmegaConf.create(card.config),
                          f"{folder / 'jaxpet.json'} (config)")
    fill_unread(merged, merged.method)  # sections the run's method does not read
    trained: Config = OmegaConf.to_object(merged)
    if card.task != config.task.name:
        raise ConfigError(f"{folder / 'jaxpet.json'}: the model was trained on task "
                          f"{card.task!r}, the config's task.name is {config.task.name!r}")
    return dataclasses.replace(
        trained, task=config.task, mesh=config.mesh,
        eval=dataclasses.replace(trained.eval, batch_size=config.eval.batch_size))


def evaluate_member(config: Config, data: TaskData, mesh: Mesh, folder: Path, out: Path,
                    run_results: dict[str, Any]) -> dict[str, Any]:
    """Scores one saved PET member; its results are the run's with the new eval metrics."""
    card = read_card(folder / "model")
    settings = member_config(config, card, folder / "model")
    lm = load_model(settings, "mlm", name=str(folder / "model"))
    lm = dataclasses.replace(lm, params=member.place_params(lm.params, mesh))
    pattern = member.prepare_pattern(settings, lm, data, card.pattern_id)
    print(f"{folder.name}: scoring the saved model of pattern {card.pattern_id} "
          f"({card.scorer})")
    metrics = member.evaluate_member(settings, pattern, lm.params, data, mesh, out)
    results = {**run_results, "eval_set": config.task.eval_set, "metrics": metrics,
               "num_eval": len(data.eval), "model_dir": str(folder / "model")}
    outputs.write_json(out / "results.json", results)
    return results


def evaluate_classifier(config: Config, data: TaskData, mesh: Mesh, folder: Path, out: Path,
                        run_results: dict[str, Any]) -> dict[str, Any]:
    """Scores one saved sequence classifier (distilled or baseline)."""
    card = read_card(folder / "model")
    settings = member_config(config, card, folder / "model")
    if list(card.labels) != list(data.labels):
        raise ConfigError(f"{folder / 'model' / 'jaxpet.json'}: labels {card.labels} are not "
                          f"task {data.name!r}'s {data.labels}")
    lm = load_model(settings, "classifier", num_labels=len(card.labels),
                    name=str(folder / "model"))
    lm = dataclasses.replace(lm, params=member.place_params(lm.params, mesh))
    print(f"{folder.name}: scoring the saved sequence classifier")
    metrics = distill.evaluate_classifier(settings, lm, lm.params, data, mesh, out,
                                          card.max_seq_length)
    results = {**run_results, "eval_set": config.task.eval_set, "metrics": metrics,
               "num_eval": len(data.eval), "model_dir": str(folder / "model")}
    outputs.write_json(out / "results.json", results)
    return results


def read_results(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    return outputs.read_json(path) if path.is_file() else {}


def evaluate_stage(config: Config, trained: Config, data: TaskData, mesh: Mesh, run: Path,
                   out: Path, stage: str, names: list[str]) -> dict[str, Any]:
    """The saved members of one stage, and their merge when the run's whole ensemble was
    saved: {"members", "patterns", "pet"[, "ensemble"]}."""
    members = {name: evaluate_member(config, data, mesh, run / stage / name, out / stage / name,
                                     read_results(run / stage / name)) for name in names}
    results = {"members": members,
               "patterns": member.aggregate(members, lambda r: f"p{r['pattern_id']}"),
               "pet": member.aggregate(members, lambda r: "all")["all"]}
    everyone = sorted(m.name for m in (run / stage).iterdir()
                      if MEMBER.fullmatch(m.name) and (m / "results.json").is_file())
    if everyone != names:
        print(f"{run / stage}: only {len(names)} of its {len(everyone)} members were saved; "
              "no ensemble is reported")
        return results
    missing = [n for n in names if "train_set_before_training" not in members[n]]
    if missing:
        raise ConfigError(f"{run / stage / missing[0] / 'results.json'}: no "
                          "train_set_before_training, the member's weight in the run's wmean "
                          "merge")
    # the run's merge (its pet.reduction) of the members' new eval scores
    merge_settings = dataclasses.replace(trained, task=config.task)
    last = stage == stages(run, trained.method)[-1]
    target = out / "ensemble" if last else out / stage / "ensemble"
    results["ensemble"] = distill.merge_members(merge_settings, data, out / stage, members, target)
    return results


def check_output(out: Path, run: Path) -> None:
    """The evaluation's folder must not be a training run's (its results would be mixed)."""
    if not fingerprint.holds_results(out):
        return
    previous = read_results(out)
    if previous.get("method") != "evaluate":
        raise ConfigError(
            f"config key 'output_dir' ({out}) holds a run's results; method evaluate writes "
            f"into a folder of its own: set output_dir to a new folder and evaluate.run_dir to "
            f"the run ({run})")
    fingerprint.clear_folder(out, "output_dir")


def run(config: Config) -> dict[str, Any]:
    """Scores the saved models of the run folder; writes and returns the results."""
    start = time.perf_counter()
    run_dir, out = folders(config)
    trained = run_config(run_dir)
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        if jax.process_index() == 0:
            check_output(out, run_dir)
            outputs.write_text(out / "config.yaml", to_yaml(config))
        return evaluate_in_folder(config, trained, run_dir, out, start)


def evaluate_in_folder(config: Config, trained: Config, run: Path, out: Path,
                       start: float) -> dict[str, Any]:
    names = {stage: saved_members(run / stage) for stage in stages(run, trained.method)
             if (run / stage).is_dir()}
    names = {stage: found for stage, found in names.items() if found}
    baselines = sorted(m.name for m in run.iterdir()
                       if re.fullmatch(r"sc-s\d+", m.name) and is_saved_model(m / "model"))
    distilled = is_saved_model(run / "distilled" / "model")
    if not (names or baselines or distilled):
        raise ConfigError(
            f"{run}: no saved models (p*-s*/model, g*/p*-s*/model, distilled/model or "
            f"sc-s*/model with jaxpet.json); the run was trained with output.save_models="
            f"{trained.output.save_models!r} or by a jaxpet that did not save models. Train it "
            "again with output.save_models=all (or final)")
    for folder in [run / stage / name for stage, found in names.items() for name in found] + [
            run / name for name in baselines] + ([run / "distilled"] if distilled else []):
        task = read_card(folder / "model").task
        if task != config.task.name:  # before any data loads: the files are another task's
            raise ConfigError(f"{folder / 'model' / 'jaxpet.json'}: the model was trained on "
                              f"task {task!r}, the config's task.name is "
                              f"{config.task.name!r}")
    enable_compilation_cache(config.compilation_cache)
    # the unlabeled set scores nothing here: only the labeled sets are read
    data = load_task_data(dataclasses.replace(
        config, task=dataclasses.replace(config.task, unlabeled_examples=0)))
    if not data.eval:
        raise ConfigError(f"task {config.task.name!r}: the {config.task.eval_set} set is empty")
    mesh = build_mesh(config)
    previous = read_results(run)
    print(f"evaluating the saved models of {run} on {len(data.eval)} {config.task.eval_set} "
          f"examples of {config.task.name}; writing to {out}")
    results: dict[str, Any] = {
        "method": "evaluate", "run_dir": str(run), "run_method": trained.method,
        "task": config.task.name, "model": trained.model.name,
        "eval_set": config.task.eval_set, "num_train": previous.get("num_train", len(data.train)),
        "num_eval": len(data.eval), "num_unlabeled": previous.get("num_unlabeled", 0)}
    stage_results = {stage: evaluate_stage(config, trained, data, mesh, run, out, stage, found)
                     for stage, found in names.items()}
    if trained.method == "ipet" and stage_results:
        results["generations"] = stage_results
        final = stage_results.get(stages(run, "ipet")[-1], {})
        results.update({k: final[k] for k in ("members", "patterns", "pet", "ensemble")
                        if k in final})
    elif stage_results:
        results.update(stage_results[""])
    if distilled:
        results["distilled"] = evaluate_classifier(
            config, data, mesh, run / "distilled", out / "distilled",
            read_results(run / "distilled"))
    if baselines:
        members = {name: evaluate_classifier(config, data, mesh, run / name, out / name,
                                             read_results(run / name)) for name in baselines}
        results["classifier"] = {"members": members,
                                 **member.aggregate(members, lambda r: "summary")}
    results["wall_time_s"] = time.perf_counter() - start
    outputs.write_json(out / "results.json", results)

    print(write_report(out, results))
    return results
