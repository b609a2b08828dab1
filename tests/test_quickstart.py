"""The user's guide, run as written: its quick-start script and its CustomLLMService example."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import ManagerFactory

from llm import LLMService
from store import INTACT, EventStore, audit_log, snapshot_path

QUICK_START = """\
import asyncio
from tasks import TaskManager

async def main():
    # 创建任务管理器
    manager = TaskManager()
    
    # 1. 创建全量刷新任务
    task_id = await manager.create_refresh_task("full")
    await manager.start_task(task_id)
    
    # 2. 创建指定省刷新任务
    province_task_id = await manager.create_refresh_task("province", "北京市")
    await manager.start_task(province_task_id)
    
    # 3. 监控任务进度
    while True:
        status = manager.get_task_status(task_id)
        print(f"进度: {status['progress']}% - {status['current_step']}")
        
        if status['status'] in ['SUCCEEDED', 'FAILED']:
            break
        
        await asyncio.sleep(1)

# 运行
asyncio.run(main())
"""  # noqa: W293 (verbatim: the guide's blank lines are indented)
"""The guide's 基本使用示例, copied verbatim (its blank lines keep their indentation)."""

PROGRESS_LINE = re.compile(r"^进度: (\d+)% - (.+)$")


def test_guide_quick_start_runs_as_written(tmp_path: Path) -> None:
    """The guide's quick-start script exits 0, prints 进度 lines up to 100%, and leaves an
    intact log and a snapshot that hold both of its tasks, finished."""
    script = tmp_path / "quick_start.py"
    script.write_text(QUICK_START, encoding="utf-8")
    log_path = tmp_path / "quick-start.hrlog"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HOSPITAL_REFRESH_")},
        "HOSPITAL_REFRESH_LOG": str(log_path),
        "HOSPITAL_REFRESH_SIM_LATENCY_MS": "0-2",
        "PYTHONIOENCODING": "utf-8",
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines
    matches = [PROGRESS_LINE.match(line) for line in lines]
    assert all(matches), lines
    progress = [int(m.group(1)) for m in matches if m]
    assert progress == sorted(progress)
    assert progress[-1] == 100
    assert lines[-1] == "进度: 100% - 完成"

    assert audit_log(log_path).fault == INTACT
    assert os.path.exists(snapshot_path(str(log_path)))
    with EventStore(log_path, readonly=True) as store:
        assert store.snapshot_used
        statuses = store.projection.list_status()
    assert [(s["task_type"], s["target"], s["status"]) for s in statuses] == [
        ("full", None, "SUCCEEDED"),
        ("province", "北京市", "SUCCEEDED"),
    ]
    assert statuses[0]["counts"]["districts"] == 2852
    assert statuses[1]["counts"]["districts"] == 16


# The guide's 自定义LLM服务 example, with the two methods it leaves out written the same way.
# ``your_custom_api_call`` is the guide's placeholder: here, a lookup by bare name.

DIRECTORY: dict[str | None, list[str]] = {
    None: ["北京市", "上海市"],
    "北京市": ["北京市"],  # a municipality: its one city has its name (a city lookup, below)
    "北京市/city": ["东城区", "西城区"],
    "东城区": ["北京协和医院", "北京医院"],
    "西城区": ["北京大学人民医院"],
}


async def your_custom_api_call(name: str | None = None, level: str = "") -> list[str]:
    await asyncio.sleep(0)
    return list(DIRECTORY[f"{name}/{level}" if level else name])


class CustomLLMService(LLMService):
    async def get_provinces(self):  # type: ignore[no-untyped-def]
        # 自定义省份获取逻辑
        return await your_custom_api_call()

    async def get_cities(self, province):  # type: ignore[no-untyped-def]
        # 自定义城市获取逻辑
        return await your_custom_api_call(province)

    async def get_districts(self, city):  # type: ignore[no-untyped-def]
        return await your_custom_api_call(city, "city")

    async def get_hospitals(self, district):  # type: ignore[no-untyped-def]
        return await your_custom_api_call(district)


def test_guide_custom_llm_service_with_one_argument_methods(open_manager: ManagerFactory) -> None:
    """A CustomLLMService written as in the guide (one bare-name argument per method) carries a
    whole province task to SUCCEEDED with its answers in the tree."""

    async def body() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        async with open_manager(CustomLLMService()) as manager:
            task_id = await manager.create_refresh_task("province", "北京市")
            await manager.start_task(task_id)
            await manager.wait_for_task(task_id, timeout=30)
            return manager.get_task_status(task_id), await manager.get_task_tree(task_id)

    status, tree = asyncio.run(body())
    assert status is not None
    assert tree is not None
    assert status["status"] == "SUCCEEDED", status["error"]
    assert status["counts"] == {"provinces": 1, "cities": 1, "districts": 2, "hospitals": 3}
    assert tree["children"] == {
        "北京市": {
            "东城区": {"北京协和医院": None, "北京医院": None},
            "西城区": {"北京大学人民医院": None},
        }
    }


class GuideExampleService(LLMService):
    """The guide's example exactly: only provinces and cities are implemented."""

    async def get_provinces(self):  # type: ignore[no-untyped-def]
        return await your_custom_api_call()

    async def get_cities(self, province):  # type: ignore[no-untyped-def]
        return await your_custom_api_call(province)


def test_service_missing_a_level_fails_the_task_naming_the_method(
    open_manager: ManagerFactory,
) -> None:
    """A service that does not implement a level the task needs ends the task FAILED (at once,
    not after retries), naming the method to override; what it could fetch is kept."""

    async def body() -> dict[str, Any] | None:
        async with open_manager(GuideExampleService(), backoff_base=30) as manager:
            task_id = await manager.create_refresh_task("province", "北京市")
            await manager.start_task(task_id)
            await manager.wait_for_task(task_id, timeout=30)
            return manager.get_task_status(task_id)

    status = asyncio.run(body())
    assert status is not None
    assert status["status"] == "FAILED"
    assert "get_districts" in status["error"]
    assert status["failed_paths"] == [["北京市", "北京市"]]
    assert status["retries"] == 0
    assert status["counts"]["cities"] == 1
