"""What a pod installs of the client's plan, checked against what the pod's interpreter has:
the plan comes from a cached probe of the image, and the image (its tag) may have changed."""

from __future__ import annotations

from remote_futures.k8s_entry import lines_to_install

IMAGE = {"numpy": "2.1.0", "requests": "2.32.3"}


def spec(**fields: object) -> dict[str, object]:
    return {"key": "k", "options": ["--index-url https://pypi.example/simple"], **fields}


def test_a_planned_pin_the_image_now_has_is_not_installed() -> None:
    plan = spec(packages=[["numpy", "2.1.0", "numpy==2.1.0"]], expected=[])
    assert lines_to_install(plan, IMAGE.get) is None


def test_a_planned_pin_at_another_version_is_installed_after_the_options() -> None:
    plan = spec(packages=[["numpy", "2.2.0", "numpy==2.2.0"],
                          ["requests", "2.32.3", "requests==2.32.3"]], expected=[])
    assert lines_to_install(plan, IMAGE.get) == [
        "--index-url https://pypi.example/simple", "numpy==2.2.0"]


def test_a_line_without_a_pin_is_always_installed() -> None:
    plan = spec(packages=[["numpy", None, "numpy>=2"]], expected=[])
    assert lines_to_install(plan, IMAGE.get) == [
        "--index-url https://pypi.example/simple", "numpy>=2"]


def test_what_the_probe_saw_and_the_image_no_longer_has_is_installed() -> None:
    plan = spec(packages=[], expected=[["requests", "2.32.3", "requests==2.32.3"],
                                       ["attrs", "24.2.0", "attrs==24.2.0"],
                                       ["numpy", "2.0.0", "numpy==2.0.0"]])
    assert lines_to_install(plan, IMAGE.get) == [
        "--index-url https://pypi.example/simple", "attrs==24.2.0", "numpy==2.0.0"]


def test_nothing_to_install_when_the_image_has_everything_expected() -> None:
    plan = spec(packages=[], expected=[["requests", "2.32.3", "requests==2.32.3"]])
    assert lines_to_install(plan, IMAGE.get) is None
