"""Stale-trial detection across hosts whose clocks disagree."""
def test_another_hosts_heartbeat_is_judged_on_this_hosts_clock(monkeypatch):
    """Clocks of two hosts may disagree: a trial stamped elsewhere is stale only once its stamp
    stops changing for the grace, as seen here; one stamped here is compared directly."""
    import datetime
    import optuna
    from harness import grid
    monkeypatch.setattr(grid, "GRACE_S", 20.0)
    monkeypatch.setattr(grid, "OBSERVED", {})

    def trial(host, beat, trial_id=1):
        t = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING,
                                      user_attrs={"host": host, "heartbeat": beat})
        t._trial_id = trial_id
        t.datetime_start = datetime.datetime.now()
        return t

    now = 1_000_000.0
    ahead = trial("other-host", now - 3600)             # its clock runs an hour behind ours: looks old
    assert not grid.is_stale(ahead, now)                # first sight: never stale
    assert not grid.is_stale(trial("other-host", now - 3595), now + 10)   # stamped again: alive
    assert not grid.is_stale(trial("other-host", now - 3595), now + 25)   # unchanged for 15 s only
    assert grid.is_stale(trial("other-host", now - 3595), now + 31)       # unchanged for 21 s: dead
    assert grid.is_stale(trial(grid.HOST, now - 21, trial_id=2), now)     # our own clock: direct
    assert not grid.is_stale(trial(grid.HOST, now - 5, trial_id=2), now)
