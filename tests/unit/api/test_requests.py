"""Create bodies: the seed's, the seed's heterogeneous one, and ours; every refusal names the field."""

import pytest

from overcloud.api.requests import RequestError, Sites, parse_create

SITES = Sites({"local-a": "local", "local-b": "local"})


def parse(body, maximum=30):
    return parse_create(body, SITES, maximum)


def test_seed_body_with_string_number():
    plan = parse({"provider": "local", "number": "3", "size": "m1.small"})
    assert plan.clusters == 3 and plan.post_site == "local-a"
    assert [s.site for s in plan.sites] == ["local-a"]


@pytest.mark.parametrize("provider", ["LOCAL", "Local", "local-b", "LOCAL-B"])
def test_provider_names_are_case_insensitive_and_may_name_a_site(provider):
    plan = parse({"provider": provider, "number": 1, "size": "small"})
    assert plan.sites[0].site == ("local-b" if "b" in provider.lower() else "local-a")


@pytest.mark.parametrize("number", ["abc", "-1", "0", "1.5", "", " ", None, True, 1.5, [], "31", 31, "1e3"])
def test_bad_numbers_are_refused_with_the_field(number):
    with pytest.raises(RequestError) as ei:
        parse({"provider": "local", "number": number, "size": "m1.small"})
    assert ei.value.status == 422 and ei.value.field == "number"
    assert "number" in ei.value.message


def test_unknown_provider_lists_the_configured_ones():
    with pytest.raises(RequestError) as ei:
        parse({"provider": "Amazon", "number": "1", "size": "m1.small"})
    assert "local-a (local)" in ei.value.message and "local-b (local)" in ei.value.message
    assert ei.value.status == 422


def test_unknown_size_lists_known_sizes():
    with pytest.raises(RequestError) as ei:
        parse({"provider": "local", "number": "1", "size": "m1.huge"})
    assert "m1.small" in ei.value.message and ei.value.field == "size"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"provider": "local", "number": "1"}, "size"),
        ({"provider": "local", "size": "small"}, "number"),
        ({"provider": "local", "number": "1", "size": "small", "colour": "red"}, "colour"),
        ({"sites": [{"undercloud": "local", "clusters": 1, "zone": "x"}]}, "sites[0].zone"),
        ({"sites": []}, "sites"),
        ({"sites": [{"clusters": 1}]}, "sites[0].undercloud"),
        ({"name": "x"}, "provider"),
    ],
)
def test_missing_and_extra_fields_are_named(body, field):
    with pytest.raises(RequestError) as ei:
        parse(body)
    assert ei.value.field == field


@pytest.mark.parametrize("body", [[], "x", 3, None])
def test_a_body_that_is_not_an_object(body):
    with pytest.raises(RequestError):
        parse(body)


def test_heterogeneous_body_puts_the_post_where_asked():
    plan = parse(
        {
            "provider": "heterogeneous",
            "local-a": {"number": "2", "size": "m1.small", "post": "no"},
            "local-b": {"number": "1", "size": "m1.medium", "post": "yes"},
        }
    )
    assert plan.post_site == "local-b" and plan.post_size == "m1.medium"
    assert [(s.site, s.clusters) for s in plan.sites] == [("local-a", 2), ("local-b", 1)]
    specs = plan.box_specs("f" * 32)
    assert [s["name"] for s in specs] == ["p0", "c1", "c2", "c3"]
    assert [s["site"] for s in specs] == ["local-b", "local-a", "local-a", "local-b"]


def test_heterogeneous_body_refuses_two_posts_and_totals_over_the_maximum():
    with pytest.raises(RequestError, match="only one"):
        parse({"provider": "heterogeneous", "local-a": {"number": "1", "size": "small", "post": "yes"},
               "local-b": {"number": "1", "size": "small", "post": "yes"}})
    with pytest.raises(RequestError, match="maximum"):
        parse({"provider": "heterogeneous", "local-a": {"number": "3", "size": "small"},
               "local-b": {"number": "3", "size": "small"}}, maximum=5)


def test_native_body():
    plan = parse({"name": "lab", "sites": [{"undercloud": "local", "clusters": 3, "size": "small"}],
                  "datalake": {"restore_from": None}, "fabric": {"enabled": True}})
    assert plan.name == "lab" and plan.clusters == 3 and plan.fabric == {"enabled": True}


def test_restore_from_must_look_like_an_overcloud_id_and_needs_the_datalake():
    with pytest.raises(RequestError) as ei:
        parse({"sites": [{"undercloud": "local", "clusters": 1}], "datalake": {"restore_from": "abc"}})
    assert ei.value.status == 422 and ei.value.field == "datalake.restore_from"
    with pytest.raises(RequestError):
        parse({"sites": [{"undercloud": "local", "clusters": 1}],
               "datalake": {"restore_from": "a" * 32, "enabled": False}})
    plan = parse({"sites": [{"undercloud": "local", "clusters": 1}], "datalake": {"restore_from": "a" * 32}})
    assert plan.datalake["restore_from"] == "a" * 32


def test_block_storage_is_refused_plainly():
    with pytest.raises(RequestError) as ei:
        parse({"sites": [{"undercloud": "local", "clusters": 1}], "datalake": {"block": {"size_gb": 10}}})
    assert "not supported on the local UnderCloud" in ei.value.message


def test_the_post_is_at_least_medium_with_a_datalake():
    with_dl = parse({"provider": "local", "number": "1", "size": "m1.small"})
    assert with_dl.box_specs("f" * 32)[0]["flavor"]["name"] == "medium"
    without = parse({"sites": [{"undercloud": "local", "clusters": 1, "size": "small"}], "datalake": {"enabled": False}})
    assert without.box_specs("f" * 32)[0]["flavor"]["name"] == "small"


def test_bad_names():
    with pytest.raises(RequestError) as ei:
        parse({"provider": "local", "number": "1", "size": "small", "name": "../etc"})
    assert ei.value.field == "name"
