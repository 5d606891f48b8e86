"""The two-user bed itself: distinct uids, private work areas, hml runs as each of them."""

from __future__ import annotations


def test_users_are_distinct_and_cannot_read_each_others_work(victim, attacker):
    assert victim.uid != attacker.uid and 0 not in (victim.uid, attacker.uid)
    (victim.work / "mine").write_text("x")
    out = attacker.run(["cat", str(victim.work / "mine")])
    assert out.returncode != 0 and "Permission denied" in out.stderr


def test_hml_runs_as_each_user(victim, attacker):
    for user in (victim, attacker):
        out = user.hml("--version")
        assert out.returncode == 0, out.stderr
        assert user.run(["id", "-u"]).stdout.strip() == str(user.uid)
