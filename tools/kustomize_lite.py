"""Render the kustomizations under deploy/k8s in Python, for tests and benchmarks where kubectl is missing.

Only what those files use, and an error (:class:`Unsupported`) for anything else, so a new feature in
a manifest cannot be rendered wrongly in silence:

* ``resources``: YAML files (one or more documents) and directories holding a kustomization;
* ``components``: directories holding a ``kind: Component``, applied to what the resources gave;
* ``configMapGenerator`` with ``literals`` and ``files``, ``behavior`` create, merge or replace, and
  ``generatorOptions.disableNameSuffixHash: true`` (the name hash and the rewriting of references
  to it are not implemented);
* ``patches`` given by ``path``, each a strategic merge patch naming its target by kind and name;
* ``namespace`` (set on every object but Namespaces) and ``images`` (``newName``, ``newTag``).

The strategic merge follows Kubernetes' rules for the fields the patches touch, as kustomize applies
them: maps merge key by key; a list of containers, init containers, env entries or volumes merges
by ``name`` (the patch's items first, in its order, each merged with the item of the same name, then
the original's other items in their order); any other list is replaced whole, except a list of maps
with no known merge key, which is :class:`Unsupported`. The same order of steps as kustomize:
resources, components, generators, patches, then namespace and images. ``kubectl kustomize`` gives
the same objects where it is installed (tests/deploy checks that). Needs PyYAML (the test extra).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name"}
CLUSTER_SCOPED = {"Namespace"}
KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "resources", "components", "configMapGenerator",
                "generatorOptions", "patches", "images"}


class Unsupported(ValueError):
    """A kustomization uses something this renderer does not implement."""


def render(directory: Path) -> list[dict]:
    """The objects ``kubectl kustomize DIRECTORY`` would print (as dicts, in no promised order)."""
    return _build(Path(directory), expect="Kustomization", objects=[])


def _load(directory: Path, expect: str) -> dict:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    kind = spec.get("kind", "Kustomization")
    if kind != expect:
        raise Unsupported(f"{directory}: kind {kind}, expected {expect}")
    unknown = set(spec) - KNOWN_FIELDS
    if unknown:
        raise Unsupported(f"{directory}: fields {sorted(unknown)}")
    return spec


def _build(directory: Path, expect: str, objects: list[dict]) -> list[dict]:
    spec = _load(directory, expect)
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects.extend(_build(path, "Kustomization", []))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    for entry in spec.get("components", []):
        objects = _build(directory / entry, "Component", objects)
    options = spec.get("generatorOptions", {})
    if spec.get("configMapGenerator") and options != {"disableNameSuffixHash": True}:
        raise Unsupported(f"{directory}: generatorOptions {options} (only disableNameSuffixHash: true)")
    for generator in spec.get("configMapGenerator", []):
        _generate(directory, generator, objects)
    for patch in spec.get("patches", []):
        if set(patch) != {"path"}:
            raise Unsupported(f"{directory}: patch {patch} (only path:)")
        _patch(objects, yaml.safe_load((directory / patch["path"]).read_text()))
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        _set_image(objects, image)
    return objects


def _generate(directory: Path, generator: dict, objects: list[dict]) -> None:
    unknown = set(generator) - {"name", "literals", "files", "behavior"}
    if unknown:
        raise Unsupported(f"configMapGenerator fields {sorted(unknown)}")
    data: dict[str, str] = {}
    for literal in generator.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep:
            raise Unsupported(f"literal {literal!r} has no '='")
        data[key] = value
    for name in generator.get("files", []):
        data[Path(name).name] = (directory / name).read_text()
    behavior = generator.get("behavior", "create")
    existing = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == generator["name"]]
    if behavior == "create":
        if existing:
            raise ValueError(f"ConfigMap {generator['name']} already exists (behavior: create)")
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    elif behavior in ("merge", "replace"):
        if len(existing) != 1:
            raise ValueError(f"ConfigMap {generator['name']}: {behavior} needs exactly one to exist")
        existing[0]["data"] = {**existing[0]["data"], **data} if behavior == "merge" else data
    else:
        raise Unsupported(f"behavior {behavior}")


def _patch(objects: list[dict], patch: dict) -> None:
    targets = [o for o in objects if o["kind"] == patch["kind"] and o["metadata"]["name"] == patch["metadata"]["name"]]
    if len(targets) != 1:
        raise ValueError(f"patch for {patch['kind']}/{patch['metadata']['name']} matches {len(targets)} objects")
    merged = merge(targets[0], patch)
    targets[0].clear()
    targets[0].update(merged)


def merge(original: Any, patch: Any, field: str = "") -> Any:
    """``patch`` strategically merged into ``original`` (neither is changed)."""
    if isinstance(original, dict) and isinstance(patch, dict):
        out = copy.deepcopy(original)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)  # null deletes the field
            else:
                out[key] = merge(original[key], value, key) if key in original else copy.deepcopy(value)
        return out
    if isinstance(original, list) and isinstance(patch, list):
        key = MERGE_KEYS.get(field)
        if key is None:
            if any(isinstance(item, dict) for item in original + patch):
                raise Unsupported(f"list {field!r} of maps has no merge key here")
            return copy.deepcopy(patch)
        by_key = {item[key]: item for item in original}
        out = [merge(by_key[item[key]], item) if item[key] in by_key else copy.deepcopy(item) for item in patch]
        named = {item[key] for item in patch}
        return out + [copy.deepcopy(item) for item in original if item[key] not in named]
    return copy.deepcopy(patch)


def pod_specs(objects: list[dict]) -> list[dict]:
    """The pod template spec of every workload among ``objects``."""
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("StatefulSet", "Job", "Deployment")]


def _set_image(objects: list[dict], image: dict) -> None:
    unknown = set(image) - {"name", "newName", "newTag"}
    if unknown:
        raise Unsupported(f"images fields {sorted(unknown)}")
    for spec in pod_specs(objects):
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            name, tag = split_image(container["image"])
            if name == image["name"]:
                tag = image.get("newTag", tag)
                container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")


def split_image(reference: str) -> tuple[str, str | None]:
    """``REGISTRY[:PORT]/NAME[:TAG]`` as (everything before the tag, the tag or None)."""
    colon = reference.rfind(":")
    if colon > reference.rfind("/"):
        return reference[:colon], reference[colon + 1:]
    return reference, None
