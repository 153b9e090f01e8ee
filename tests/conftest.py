import pytest
from helpers import make_params


@pytest.fixture
def params():
    return make_params()
