"""A fake `gcloud` and `xpk` for the TPU launcher tests: `fake_cloud.py TOOL ARG…`.

Each call appends {"tool", "argv"} as a JSON line to $FAKE_CLOUD_DIR/calls.jsonl, then plays back the
canned world in $FAKE_CLOUD_DIR/state.json (and saves it back):
    queued:   {name: {"states": [...], "labels": {...}}}   existing queued resources; each describe shows
              the next state (the last one repeats): ACCEPTED, PROVISIONING, ACTIVE, SUSPENDED, FAILED
    plans:    {name: [[states of the 1st creation], [of the 2nd], …]}   (default: ["ACTIVE"])
    probes:   {run: [outputs…]}   what probing a run on worker 0 prints: running | gone | EXIT CODE
    objects:  {gs path: k}        `gcloud storage ls` finds it from its k-th listing on
    workloads / xpk_plans:        the same for xpk workloads and their Status column (Admitted, Evicted, Finished)
    writes:   {run or workload: [{gs path: text}, …]}   what the run "writes" to the bucket: the k-th probe of
              the run (or listing of the workload) writes the k-th dict into $FAKE_CLOUD_DIR/bucket, which
              `gcloud storage ls|cat` then find (a folder is listed once a file below it exists)
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path


def _next(states: list[str]) -> str:
    return states.pop(0) if len(states) > 1 else states[0]


def _flag(argv: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def gcloud(argv: list[str], world: dict) -> int:
    words = [a for a in argv if not a.startswith("--")]
    if words[:1] == ["alpha"]:
        words = words[1:]
    if words[:3] == ["compute", "tpus", "queued-resources"]:
        return _queued(words[3], words[4], argv, world)
    if words[:4] == ["compute", "tpus", "tpu-vm", "ssh"] or words[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
        name = words[4] if words[3] == "ssh" else words[5].split(":")[0]  # scp LOCAL NAME:REMOTE
        resource = world["queued"].get(name)
        if resource is None or resource.get("current", resource["states"][0]) != "ACTIVE":
            return _fail(f"ERROR: (gcloud.compute.tpus.tpu-vm.{words[3]}) NOT_FOUND: node {name} is not ready")
        match = re.search(r"logs/([^ ]+)\.exit; elif kill", _flag(argv, "command") or "")
        if match:
            print(_next(world["probes"].setdefault(match[1], ["running"])))
            _write(world, match[1])
        return 0
    if words[:2] == ["storage", "ls"]:
        path = words[2]
        world["ls_calls"][path] = world["ls_calls"].get(path, 0) + 1
        if path in world["objects"] and world["ls_calls"][path] >= world["objects"][path] or _in_bucket(path).exists():
            print(path)
            return 0
        return _fail("ERROR: (gcloud.storage.ls) One or more URLs matched no objects.")
    if words[:2] == ["storage", "cat"]:
        if not _in_bucket(words[2]).is_file():
            return _fail("ERROR: (gcloud.storage.cat) One or more URLs matched no objects.")
        print(_in_bucket(words[2]).read_text(), end="")
    return 0


def _in_bucket(path: str) -> Path:
    return Path(os.environ["FAKE_CLOUD_DIR"]) / "bucket" / path.removeprefix("gs://")


def _write(world: dict, key: str) -> None:
    """The run `key` writes its next batch of files to the bucket."""
    batches = world["writes"].get(key) or [{}]
    for path, text in batches.pop(0).items():
        _in_bucket(path).parent.mkdir(parents=True, exist_ok=True)
        _in_bucket(path).write_text(text)


def _queued(verb: str, name: str, argv: list[str], world: dict) -> int:
    resource = world["queued"].get(name)
    if verb == "create":
        if resource is not None:
            return _fail(f"ERROR: (gcloud.compute.tpus.queued-resources.create) ALREADY_EXISTS: {name}")
        plans = world["plans"].get(name) or [["ACTIVE"]]
        labels = dict(pair.split("=", 1) for pair in (_flag(argv, "labels") or "").split(",") if pair)
        world["queued"][name] = {"states": list(plans.pop(0) if len(plans) > 1 else plans[0]), "labels": labels}
        return 0
    if resource is None:
        return _fail(f"ERROR: (gcloud.compute.tpus.queued-resources.{verb}) NOT_FOUND: Resource {name} was not found")
    if verb == "describe":
        state = resource["current"] = _next(resource["states"])
        node = {"acceleratorType": "fake", "labels": resource["labels"]}
        spec = {"nodeSpec": [{"nodeId": name, "node": node}]}
        print(json.dumps({"name": name, "state": {"state": state}, "tpu": spec}))
    elif verb == "delete":
        del world["queued"][name]
    return 0


def xpk(argv: list[str], world: dict) -> int:
    verb, name = argv[1], _flag(argv, "workload")
    if verb == "create":
        plans = world["xpk_plans"].get(name, ["Admitted", "Finished"])
        world["workloads"][name] = {"statuses": list(plans)}
    elif verb == "delete":
        world["workloads"].pop(name, None)
    elif verb == "list":
        print("[XPK] Starting xpk\n[XPK] Workload List Output:")
        print("Jobset Name   Created Time   Priority   TPU VMs Needed   TPU VMs Running/Ran   TPU VMs Done   "
              "Status   Status Message   Status Time")
        for workload, entry in world["workloads"].items():
            status = _next(entry["statuses"])
            _write(world, workload)
            print(f"{workload}   2026-11-30T09:00:00Z   medium   4   4   <none>   {status}   JobSet {status.lower()}   "
                  f"2026-11-30T09:05:00Z")
    return 0


def main() -> int:
    tool, argv = sys.argv[1], sys.argv[2:]
    folder = Path(os.environ["FAKE_CLOUD_DIR"])
    with open(folder / "calls.jsonl", "a") as log:
        log.write(json.dumps({"tool": tool, "argv": argv}) + "\n")
    state = folder / "state.json"
    world = json.loads(state.read_text()) if state.exists() else {}
    for key in ("queued", "plans", "probes", "objects", "ls_calls", "workloads", "xpk_plans", "writes"):
        world.setdefault(key, {})
    code = gcloud(argv, world) if tool == "gcloud" else xpk(argv, world)
    state.write_text(json.dumps(world))
    return code


if __name__ == "__main__":
    sys.exit(main())
