"""engine_endpoints: the endpoints of the version a container was planned with (a rollback target's label),
not the current plan's."""
from ansible_collections.gpufleet.serving.plugins.filter.engine import engine_endpoints
from ansible_collections.gpufleet.serving.plugins.plugin_utils.knowledge import engine_versions, load_knowledge


def test_each_sglang_version_has_its_own_version_endpoint():
    old, new = engine_endpoints("sglang", "0.5.1.post2"), engine_endpoints("sglang", "0.5.23")
    assert old["version"]["path"] == "/get_server_info" and new["version"]["path"] == "/server_info"
    assert old["health"] == new["health"] == "/health"


def test_every_table_version_answers_what_its_plan_carries():
    table = load_knowledge()
    for engine in table["engines"]:
        for version in engine_versions(table, engine):
            assert engine_endpoints(engine, version) == table["engines"][engine][version]["http"]


def test_an_unlabelled_or_unknown_version_leaves_the_module_its_default():
    assert engine_endpoints("vllm") is None
    assert engine_endpoints("vllm", "0.0.1") is None
    assert engine_endpoints("tgi", "1.0") is None


def test_the_result_is_a_copy():
    engine_endpoints("vllm", "0.26.0")["health"] = "/changed"
    assert engine_endpoints("vllm", "0.26.0")["health"] == "/health"
