"""Reward plugins and the execution sandbox: every limit is exercised, every plugin kind
scores, and a broken user plugin gives an error that names it."""

from __future__ import annotations

import math
import os
import socket
import sys
import time
import types
from pathlib import Path

import pytest

from forgeml.core.config import RewardConfig
from forgeml.core.errors import ConfigError
from forgeml.eval.sandbox import (
    SandboxLimits,
    network_isolation,
    network_namespace_available,
    run_python,
    score_io_cases,
)
from forgeml.train.rewards import (
    REWARD_KINDS,
    RewardError,
    build_reward,
    build_rewards,
    extract_code,
    score_completions,
)

# --- sandbox --------------------------------------------------------------------------


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for a reaper (it runs nothing any more)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def test_sandbox_runs_with_stdin_in_an_empty_temp_cwd():
    res = run_python(
        "import os\nprint(input() * 2)\nprint(os.getcwd())\nprint(os.listdir('.'))", "ab\n"
    )
    assert res.passed, res.error
    doubled, cwd, listing = res.stdout.splitlines()
    assert doubled == "abab" and listing == "[]"
    assert cwd != os.getcwd() and "forgeml-sandbox-" in cwd
    assert not Path(cwd).exists()  # removed afterwards


def test_sandbox_program_runs_as_a_fresh_main_with_installed_packages():
    # The launcher's own names do not leak into the program; installed packages import
    # although the child starts without `site`; errors name the program's own line.
    src = (
        "import sys, resource, yaml\n"
        "print(__name__, sys.modules['__main__'].__dict__ is globals())\n"
        "print(sorted(k for k in globals() if not k.startswith('__')))\n"
        "print(resource.getrlimit(resource.RLIMIT_AS)[0] >> 20)\n"
        "def f():\n    raise ValueError('boom')\n"
        "f()\n"
    )
    res = run_python(src, limits=SandboxLimits(memory_mb=300))
    main, names, memory = res.stdout.splitlines()
    assert main == "__main__ True" and names == "['resource', 'sys', 'yaml']"
    assert memory == "300" and res.error == "ValueError: boom"


def test_sandbox_kills_a_runaway_program_and_its_children():
    src = (
        "import subprocess, sys\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "print(child.pid, flush=True)\n"
        "while True:\n    pass\n"
    )
    t0 = time.perf_counter()
    # Long enough for the program to start and print its child's pid on a busy machine.
    res = run_python(src, limits=SandboxLimits(timeout_s=3.0))
    assert time.perf_counter() - t0 < 12
    assert not res.passed and "timed out" in res.error
    child = int(res.stdout.split()[0])
    deadline = time.time() + 5
    while not _dead(child) and time.time() < deadline:
        time.sleep(0.05)
    assert _dead(child), "the program's child outlived the timeout"


def test_sandbox_memory_limit():
    big = "x = bytearray(400 * 1024 * 1024)\nprint('allocated')"
    res = run_python(big, limits=SandboxLimits(memory_mb=200))
    assert not res.passed and "MemoryError" in res.error
    assert run_python(big, limits=SandboxLimits(memory_mb=1024)).passed


def test_sandbox_output_file_size_limit():
    res = run_python("while True:\n    print('x' * 4096)", limits=SandboxLimits(file_mb=1))
    assert not res.passed and ("File too large" in res.error or "file-size" in res.error)


@pytest.fixture
def listening_port():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    yield srv.getsockname()[1]
    srv.close()


CONNECT = "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('connected')"


@pytest.mark.parametrize("isolation", [None, "audit-hook"])
def test_sandbox_has_no_network(listening_port, isolation):
    src = CONNECT.format(port=listening_port)
    # The control: with the network allowed the same program reaches our loopback server.
    assert run_python(src, limits=SandboxLimits(network=True)).stdout == "connected\n"
    limits = SandboxLimits(isolation=isolation)
    res = run_python(src, limits=limits)
    assert not res.passed and "connected" not in res.stdout
    if network_isolation(limits) == "netns":
        assert "unreachable" in res.error  # own namespace: no interface, not even loopback
    else:
        assert "network access is disabled" in res.error


def test_network_isolation_reports_what_it_does():
    assert network_isolation(SandboxLimits(network=True)) is None
    expected = "netns" if network_namespace_available() else "audit-hook"
    assert network_isolation(SandboxLimits()) == expected


def test_score_io_cases_one_fresh_process_per_case():
    src = "import os\nn = int(input())\nprint(n * n)\nopen('state', 'a').write('x')\nprint(len(open('state').read()))"
    cases = [
        {"inputs": [3], "expected": [9, 1]},
        {"inputs": [4], "expected": [16, 1]},
        {"inputs": [5], "expected": [24, 1]},
    ]
    score, results = score_io_cases(src, cases)
    assert score == pytest.approx(2 / 3)
    assert [r.passed for r in results] == [True, True, False]


# --- plugins --------------------------------------------------------------------------


@pytest.fixture
def plugin_module(monkeypatch):
    mod = types.ModuleType("rl_user_plugins")
    mod.length_reward = lambda prompt, completion, meta: len(completion) / 10
    mod.boom = lambda prompt, completion, meta: 1 / 0
    mod.nan = lambda prompt, completion, meta: math.nan
    mod.text = lambda prompt, completion, meta: "good"
    mod.not_callable = 3
    monkeypatch.setitem(sys.modules, "rl_user_plugins", mod)
    return mod


def test_function_plugin_by_kind_and_by_import_path(plugin_module):
    by_kind = build_reward(RewardConfig(kind="function", function="rl_user_plugins:length_reward"))
    by_path = build_reward(RewardConfig(kind="rl_user_plugins:length_reward"))
    for plugin in (by_kind, by_path):
        assert plugin(["p", "p"], ["abc", "abcdefghij"], [{}, {}]) == [0.3, 1.0]
    assert by_path.name == "rl_user_plugins:length_reward"


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        ("boom", "raised ZeroDivisionError on completion 0"),
        ("nan", "returned nan"),
        ("text", "returned str"),
    ],
)
def test_broken_user_plugin_errors_name_it(plugin_module, fn, message):
    plugin = build_reward(RewardConfig(kind=f"rl_user_plugins:{fn}", name="mine"))
    with pytest.raises(RewardError, match=message) as info:
        plugin(["p"], ["c"], [{}])
    assert "reward plugin 'mine'" in str(info.value)


def test_function_plugin_workers_score_at_once_in_order(plugin_module, monkeypatch):
    import threading

    together = {"barrier": threading.Barrier(2, timeout=10)}  # passes only if two calls overlap

    def waits_for_a_partner(prompt: str, completion: str, meta: dict) -> float:
        together["barrier"].wait()
        if completion == "bad":
            raise ValueError("no")
        return float(len(completion))

    monkeypatch.setattr(plugin_module, "partner", waits_for_a_partner, raising=False)
    plugin = build_reward(RewardConfig(kind="rl_user_plugins:partner", workers=2))
    assert plugin(["p"] * 4, ["a", "bbb", "cc", "dddd"], [{}] * 4) == [1.0, 3.0, 2.0, 4.0]
    with pytest.raises(RewardError, match="raised ValueError on completion 1"):
        plugin(["p"] * 2, ["ok", "bad"], [{}] * 2)
    together["barrier"] = threading.Barrier(2, timeout=0.2)
    serial = build_reward(RewardConfig(kind="rl_user_plugins:partner"))  # workers 1
    with pytest.raises(RewardError, match="BrokenBarrierError"):  # one call at a time
        serial(["p"] * 2, ["a", "b"], [{}] * 2)


def test_bad_plugin_specs_are_config_errors(plugin_module):
    with pytest.raises(ConfigError, match="not callable"):
        build_reward(RewardConfig(kind="rl_user_plugins:not_callable"))
    with pytest.raises(ConfigError, match="unknown reward kind"):
        build_reward(RewardConfig(kind="magic"))
    with pytest.raises(ConfigError, match="needs `pattern`"):
        build_reward(RewardConfig(kind="regex"))
    with pytest.raises(ConfigError, match="bad regex"):
        build_reward(RewardConfig(kind="regex", pattern="("))
    with pytest.raises(ConfigError, match="rl.rewards is empty"):
        build_rewards([])
    with pytest.raises(ConfigError, match="names repeat"):
        build_rewards([RewardConfig(kind="regex", pattern="a")] * 2)


def test_wrong_count_is_an_error():
    from forgeml.train.rewards import RewardPlugin

    plugin = RewardPlugin("short", 1.0, lambda p, c, m: [1.0])
    with pytest.raises(RewardError, match="returned 1 rewards for 2"):
        plugin(["a", "b"], ["a", "b"], [{}, {}])


def test_regex_and_exact_match():
    regex = build_reward(RewardConfig(kind="regex", pattern=r"\bdef \w+\("))
    assert regex(["p"] * 2, ["def f(x): ...", "lambda x: x"], [{}, {}]) == [1.0, 0.0]
    exact = build_reward(RewardConfig(kind="exact_match", pattern=r"ANSWER:\s*(\S+)"))
    metas = [{"answer": 42}] * 3
    assert exact(["p"] * 3, ["so ANSWER: 42", "ANSWER: 41", "no answer"], metas) == [1.0, 0.0, 0.0]
    whole = build_reward(RewardConfig(kind="exact_match", answer_field="gold"))
    assert whole(["p"] * 2, [" Paris\n", "Lyon"], [{"gold": "Paris"}] * 2) == [1.0, 0.0]
    with pytest.raises(RewardError, match="no 'gold' field"):
        whole(["p"], ["Paris"], [{}])


def test_execution_plugin_scores_fraction_of_cases_in_the_sandbox():
    plugin = build_reward(RewardConfig(kind="execution", timeout_s=2.0))
    tests = [{"inputs": [2, 3], "expected": [5]}, {"inputs": [10, -4], "expected": [6]}]
    right = "```python\na = int(input())\nb = int(input())\nprint(a + b)\n```\ntrailing words"
    half = "a = int(input())\nb = int(input())\nprint(5)"
    hang = "while True:\n    pass"
    t0 = time.perf_counter()
    got = plugin(["p"] * 3, [right, half, hang], [{"tests": tests}] * 3)
    assert got == [1.0, 0.5, 0.0]
    assert time.perf_counter() - t0 < 20
    with pytest.raises(RewardError, match="no test cases in 'tests'"):
        plugin(["p"], [right], [{}])


def test_execution_plugin_scores_invalid_syntax_without_running_it(monkeypatch):
    import forgeml.eval.sandbox as sandbox

    def no_process(*args, **kwargs):
        raise AssertionError("a program that does not compile was run")

    monkeypatch.setattr(sandbox, "run_python", no_process)
    plugin = build_reward(RewardConfig(kind="execution"))
    tests = [{"inputs": [], "expected": ["1"]}]
    assert plugin(["p"], ["```python\ndef (:\n```"], [{"tests": tests}]) == [0.0]


def test_extract_code():
    assert extract_code("Here:\n```python\nprint(1)\n```\nbye") == "print(1)\n"
    assert extract_code("```\nprint(2)\n") == "print(2)\n"  # unclosed fence: to the end
    assert extract_code("print(3)") == "print(3)"


def test_reward_model_plugin_scores_with_a_trained_reward_model(tmp_path):
    """H2's RewardScorer on a tiny reward model trained to prefer replies saying 'yes'."""
    import torch
    from preference_fixtures import make_base_model, write_pairs

    from forgeml.core.config import validate_recipe
    from forgeml.train.reward_model import train_reward_model

    recipe = validate_recipe({
        "train": {"max_steps": 30, "micro_batch_size": 8, "dtype": "fp32", "checkpoint_every": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 3},
        "reward_model": {"heldout_fraction": 0.25, "max_length": 64},
    })  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: no OpenMP spin-waits on the busy 2-core box
    try:
        summary = train_reward_model(
            recipe, base_model_dir=make_base_model(tmp_path), progress=False,
            pairs_path=write_pairs(tmp_path / "pairs.jsonl", 64), out_dir=tmp_path / "rm",
        )  # fmt: skip
        plugin = build_reward(RewardConfig(kind="reward_model", model=summary["model_dir"]))
        prompt = "apple river stone cloud"
        metas = [{}, {}, {"messages": [{"role": "user", "content": prompt}]}]
        yes, no, yes_chat = plugin([prompt] * 3, ["yes green", "no green", "yes green"], metas)
    finally:
        torch.set_num_threads(threads)
    assert yes > no
    assert yes_chat == pytest.approx(yes)  # a plain prompt is scored as one user turn
    with pytest.raises(ConfigError, match="needs `model`"):
        build_reward(RewardConfig(kind="reward_model"))


def test_reward_model_plugin_without_the_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "forgeml.train.reward_model", None)
    with pytest.raises(ConfigError, match="reward models are not available"):
        build_reward(RewardConfig(kind="reward_model", model="rm"), ws="WS")


def test_weighted_sum_of_plugins(plugin_module):
    plugins = build_rewards(
        [
            RewardConfig(kind="rl_user_plugins:length_reward", name="len", weight=2.0),
            RewardConfig(kind="regex", pattern="b", weight=-1.0),
        ]
    )
    total, each = score_completions(plugins, ["p", "p"], ["ab", "aaaa"], [{}, {}])
    assert each == {"len": [0.2, 0.4], "regex": [1.0, 0.0]}
    assert total == pytest.approx([2 * 0.2 - 1.0, 2 * 0.4])
    assert set(REWARD_KINDS) == {"function", "regex", "exact_match", "execution", "reward_model"}


def test_cases_after_a_timeout_are_failed_without_running():
    cases = [{"inputs": [], "expected": []}] * 3
    t0 = time.perf_counter()
    score, results = score_io_cases(
        "while True:\n    pass", cases, limits=SandboxLimits(timeout_s=1.0), stop_after_timeout=True
    )
    # Running the three would take at least 3 s; the rest of the margin is process overhead.
    assert score == 0.0 and time.perf_counter() - t0 < 3.0
    assert "timed out" in results[0].error
    assert [r.error for r in results[1:]] == ["not run: an earlier case timed out"] * 2
