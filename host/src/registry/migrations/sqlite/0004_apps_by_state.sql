-- Every command looks for running apps first (housekeeping), so that
-- costs the same after 100,000 stopped apps as after none.

CREATE INDEX apps_by_state ON apps (state, has_lease);
