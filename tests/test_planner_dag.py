"""TaskDAG invariants (property tests), rollback by immutability, exports."""

from __future__ import annotations

import json

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powersampling.planner import (
    DAG_JSON_SCHEMA,
    DAGLimits,
    DAGValidationError,
    Task,
    TaskDAG,
    dag_from_json,
    dag_to_dict,
    dag_to_json,
    to_dot,
    to_mermaid,
    to_tree,
)


@st.composite
def random_plans(draw):
    """Random hierarchies with random dependencies that may or may not be valid."""
    n = draw(st.integers(1, 12))
    ids = [f"t{i}" for i in range(n)]
    tasks = []
    for i, tid in enumerate(ids):
        parent = draw(st.one_of(st.none(), st.sampled_from(ids[:i]))) if i else None
        deps = draw(st.lists(st.sampled_from(ids), max_size=3, unique=True))
        text = draw(st.text(min_size=1, max_size=20).filter(lambda s: s.strip()))
        tasks.append(Task(tid, text, parent=parent, dependencies=tuple(deps)))
    return tasks


def _reference_ok(tasks: list[Task]) -> bool:
    """Independent statement of validity: no self/lineage dependency, and the lifted leaf graph is acyclic."""
    parent = {t.id: t.parent for t in tasks}

    def ancestors(tid):
        out = []
        while parent[tid] is not None:
            tid = parent[tid]
            out.append(tid)
        return out

    for t in tasks:
        for d in t.dependencies:
            if d == t.id or d in ancestors(t.id) or t.id in ancestors(d):
                return False
    leaves = [t.id for t in tasks if not any(o.parent == t.id for o in tasks)]
    g = nx.DiGraph()
    g.add_nodes_from(leaves)
    by_id = {t.id: t for t in tasks}
    for leaf in leaves:
        for owner in [leaf, *ancestors(leaf)]:
            for d in by_id[owner].dependencies:
                g.add_edges_from((x, leaf) for x in leaves if x == d or d in ancestors(x))
    return nx.is_directed_acyclic_graph(g)


@settings(max_examples=150, deadline=None)
@given(random_plans())
def test_validation_matches_reference_and_order_respects_every_constraint(tasks):
    ok = _reference_ok(tasks)
    if not ok:
        with pytest.raises(DAGValidationError):
            TaskDAG("r", tasks, limits=DAGLimits(max_depth=20, max_children=20))
        return
    dag = TaskDAG("r", tasks, limits=DAGLimits(max_depth=20, max_children=20))
    order = dag.topological_order()
    assert sorted(order) == sorted(t.id for t in tasks)
    pos = {tid: i for i, tid in enumerate(order)}
    waves = dag.parallel_waves()
    wave_of = {tid: i for i, w in enumerate(waves) for tid in w}
    assert sorted(wave_of) == sorted(t.id for t in dag.leaves())
    for t in tasks:
        if t.parent is not None:
            assert pos[t.parent] < pos[t.id]
        for d in t.dependencies:
            # every leaf under the dependency comes before (and in an earlier wave than) every leaf under t
            before = [x for x in [d, *dag.descendants(d)] if dag.is_leaf(x)]
            after = [x for x in [t.id, *dag.descendants(t.id)] if dag.is_leaf(x)]
            for b in before:
                for a in after:
                    assert pos[b] < pos[a]
                    assert wave_of[b] < wave_of[a]
    assert dag_from_json(dag_to_json(dag)) == dag


def test_specific_invariants_are_enforced():
    a = Task("a", "first")
    with pytest.raises(DAGValidationError, match="duplicate"):
        TaskDAG("r", [a, Task("a", "again")])
    with pytest.raises(DAGValidationError, match="unknown task"):
        TaskDAG("r", [Task("b", "x", dependencies=("zz",))])
    with pytest.raises(DAGValidationError, match="cycle"):
        TaskDAG("r", [Task("a", "x", dependencies=("b",)), Task("b", "y", dependencies=("a",))])
    with pytest.raises(DAGValidationError, match="ancestor"):
        TaskDAG("r", [a, Task("a.1", "child", parent="a", dependencies=("a",))])
    with pytest.raises(DAGValidationError, match="descendant"):
        TaskDAG("r", [Task("a", "x", dependencies=("a.1",)), Task("a.1", "child", parent="a")])
    # a cycle only visible once dependencies are lifted through the hierarchy
    with pytest.raises(DAGValidationError, match="cycle"):
        TaskDAG(
            "r",
            [Task("a", "x"), Task("a.1", "y", parent="a", dependencies=("b",)), Task("b", "z", dependencies=("a",))],
        )
    with pytest.raises(DAGValidationError, match="depth"):
        TaskDAG("r", [a, Task("a.1", "c", parent="a"), Task("a.1.1", "g", parent="a.1")], limits=DAGLimits(max_depth=2))
    with pytest.raises(DAGValidationError, match="budget"):
        TaskDAG("r", [Task(f"t{i}", "x") for i in range(5)], limits=DAGLimits(max_tasks=4))
    with pytest.raises(DAGValidationError, match="subtasks"):
        TaskDAG("r", [Task(f"t{i}", "x") for i in range(5)], limits=DAGLimits(max_children=4))
    with pytest.raises(DAGValidationError, match="at least one"):
        TaskDAG("r", [])


def test_hierarchy_and_precedence_are_separate_and_waves_follow_lifting():
    dag = TaskDAG(
        "r",
        [
            Task("a", "design"),
            Task("b", "build", dependencies=("a",)),
            Task("b.1", "frontend", parent="b"),
            Task("b.2", "backend", parent="b"),
            Task("c", "ship", dependencies=("b",)),
        ],
    )
    assert set(dag.dependency_graph().edges) == {("a", "b"), ("b", "c")}
    assert set(dag.hierarchy_graph().edges) == {("b", "b.1"), ("b", "b.2")}
    assert dag.parallel_waves() == [["a"], ["b.1", "b.2"], ["c"]]
    assert dag.topological_order() == ["a", "b", "b.1", "b.2", "c"]


def test_changes_return_new_dags_and_failed_changes_leave_the_old_one():
    dag = TaskDAG("r", [Task("a", "x", metadata={"k": [1]}), Task("b", "y", dependencies=("a",))])
    snapshot = dag_to_json(dag)
    with pytest.raises(DAGValidationError):
        dag.add_tasks([Task("c", "z", dependencies=("nope",))])
    with pytest.raises(DAGValidationError):
        dag.update_task("a", dependencies=("b",))
    assert dag_to_json(dag) == snapshot
    bigger = dag.replace_subtasks(
        "a", [Task("a.1", "p", parent="a"), Task("a.2", "q", parent="a", dependencies=("a.1",))]
    )
    assert len(bigger) == 4 and len(dag) == 2
    bigger["a"].metadata["k"].append(2)  # the copies do not share mutable state
    assert dag["a"].metadata == {"k": [1]}
    # replacing subtasks that another task depends on is refused
    with pytest.raises(DAGValidationError, match="unknown task"):
        bigger.add_tasks([Task("c", "z", dependencies=("a.2",))]).replace_subtasks("a", [Task("a.9", "w", parent="a")])


def test_json_export_is_versioned_schema_valid_and_lossless():
    jsonschema = pytest.importorskip("jsonschema")
    dag = TaskDAG(
        'plan "it"',
        [
            Task("a", "x", task_type="research", agent="bob", tool="web", effort=1.5, metadata={"nested": {"n": 1}}),
            Task("a.1", "y", parent="a", status="done", atomic=False),
        ],
        metadata={"route": "power", "fallback": True, "fallback_reason": "x", "quality_score": 0.5},
    )
    data = dag_to_dict(dag)
    jsonschema.validate(data, DAG_JSON_SCHEMA)
    assert data["schema_version"] == "1.0"
    assert dag_from_json(json.dumps(data)) == dag
    with pytest.raises(DAGValidationError, match="schema_version"):
        dag_from_json(json.dumps({**data, "schema_version": "2.0"}))
    with pytest.raises(DAGValidationError, match="unknown field"):
        dag_from_json(json.dumps({**data, "tasks": [{**data["tasks"][0], "oops": 1}]}))


HOSTILE = 'evil"] --> x; click n0 "javascript:alert(1)" }\n digraph { <b>#;|[]'


def test_mermaid_and_dot_escape_task_text():
    dag = TaskDAG(
        HOSTILE, [Task("a", HOSTILE), Task("b", "fine", dependencies=("a",)), Task("b.1", HOSTILE, parent="b")]
    )
    mermaid = to_mermaid(dag)
    for line in mermaid.splitlines()[1:]:
        # every label is one quoted string with no raw quote, bracket, pipe or newline inside
        if '["' in line:
            label = line.split('["', 1)[1].rsplit('"]', 1)[0]
            assert not any(ch in label for ch in '"[]|<>{}\n`')
    # header, node a, subgraph b, node b.1, end, edge a->b: the hostile text added no statement
    assert len(mermaid.splitlines()) == 6
    dot = to_dot(dag)
    graph_lines = [line for line in dot.splitlines() if "label=" in line]
    for line in graph_lines:
        label = line.split("label=", 1)[1]
        body = label[1 : label.rindex('"')]
        assert '"' not in body.replace('\\"', "") and "\n" not in body
    assert dot.count("{") - dot.count("\\{") >= 1
    tree = to_tree(dag)
    assert "Waves:" in tree and tree.count("\n") == 5


def test_tree_shows_dependencies():
    dag = TaskDAG("r", [Task("a", "design"), Task("b", "build", dependencies=("a",))])
    assert "b: build [generic]  (after a)" in to_tree(dag)
