"""Groups files for allow lists: parsing real files, and each kind of bad file refused with a clear reason."""

from __future__ import annotations

import json

import pytest

from zmqagents.agents.capability import Capability, CapabilityError
from zmqagents.agents.groups import GroupsError, load_groups
from zmqagents.identity import Identity, format_public_key


def test_toml_and_json_groups_resolve_ids_keys_and_contacts(tmp_path):
    a, b, c = Identity.generate(), Identity.generate(), Identity.generate()
    toml = tmp_path / "groups.toml"
    toml.write_text(f'ops = ["{a.node_id.hex()}", "{format_public_key(b.public_key)}"]\n'
                    f'edge = ["{c.contact("tcp://127.0.0.1:5000")}"]\nnobody = []\n')
    assert load_groups(toml) == {"ops": frozenset({a.node_id, b.node_id}), "edge": frozenset({c.node_id}),
                                 "nobody": frozenset()}
    js = tmp_path / "groups.json"
    js.write_text(json.dumps({"ops": [a.node_id.hex()]}))
    assert load_groups(js) == {"ops": frozenset({a.node_id})}


@pytest.mark.parametrize("name, text, reason", [
    ("g.toml", "ops = [", "not valid TOML"),
    ("g.json", "{", "not valid JSON"),
    ("g.json", "[1]", "expected a table"),
    ("g.toml", 'ops = "abc"', "group 'ops' must be an array"),
    ("g.toml", "ops = [1]", "group 'ops', member 1: expected a string"),
    ("g.toml", 'ops = ["not-an-id"]', "group 'ops', member 1:"),
    ("g.toml", '"bad name" = []', "group name 'bad name'"),
    ("g.toml", '"@ops" = []', "without the @"),
])
def test_bad_groups_files_name_the_problem(tmp_path, name, text, reason):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(GroupsError) as info:
        load_groups(path)
    assert reason in str(info.value) and str(path) in str(info.value)


def test_unreadable_and_binary_groups_files(tmp_path):
    with pytest.raises(GroupsError, match="cannot read groups file"):
        load_groups(tmp_path / "absent.toml")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(GroupsError, match="not UTF-8"):
        load_groups(binary)


def test_capability_allow_list_takes_ids_and_group_names_only():
    node = Identity.generate().node_id
    assert Capability("x", allow={node, "ops"}).allow == frozenset({node, "ops"})
    assert Capability("x", allow={node, "ops"}).policy().groups == ("ops",)
    for bad in ({"@ops"}, {b"short"}, {3}, "ops"):
        with pytest.raises(CapabilityError, match="allow"):
            Capability("x", allow=bad)
