"""The CDK app's stack, synthesized once for the whole folder: jsii's start and a synth take seconds."""

from __future__ import annotations

import pytest

from tests.deploy.cfn_template import Synthesized, synthesize


@pytest.fixture(scope="session")
def synthesized() -> Synthesized:
    return synthesize()
