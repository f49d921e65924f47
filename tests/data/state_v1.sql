-- Frozen state database at schema version 1 (every table of state/schema.py except `reviews`,
-- which migration 2 adds), with a small run. Never edit: it is what an old home looks like.
-- Used by tests/unit/test_state_migrations.py. Generated once with sqlite3's iterdump().
BEGIN TRANSACTION;
CREATE TABLE artifacts (
	id INTEGER NOT NULL, 
	run_id VARCHAR NOT NULL, 
	attempt_id INTEGER NOT NULL, 
	step VARCHAR NOT NULL, 
	path VARCHAR NOT NULL, 
	size INTEGER NOT NULL, 
	sha256 VARCHAR NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE attempts (
	id INTEGER NOT NULL, 
	run_id VARCHAR NOT NULL, 
	step VARCHAR NOT NULL, 
	step_version VARCHAR NOT NULL, 
	cache_key VARCHAR NOT NULL, 
	number INTEGER NOT NULL, 
	status VARCHAR NOT NULL, 
	owner_id VARCHAR NOT NULL, 
	lease_generation INTEGER NOT NULL, 
	started_at FLOAT NOT NULL, 
	ended_at FLOAT, 
	error VARCHAR, 
	output_dir VARCHAR, 
	output_hash VARCHAR, 
	summary_json VARCHAR, 
	params_json VARCHAR NOT NULL, 
	inputs_json VARCHAR NOT NULL, 
	invalidated_at FLOAT, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_attempt UNIQUE (run_id, step, cache_key, number)
);
INSERT INTO "attempts" VALUES(1,'toy-v1','make_items','1','k1',1,'succeeded','o1',1,1767225601.0,1767225602.0,NULL,'artifacts/toy-v1/make_items/k1','h1','{"items":3}','{"items":3}','{}',NULL);
CREATE TABLE batches (
	id INTEGER NOT NULL, 
	run_id VARCHAR NOT NULL, 
	step VARCHAR NOT NULL, 
	cache_key VARCHAR NOT NULL, 
	ledger VARCHAR NOT NULL, 
	idx INTEGER NOT NULL, 
	n_items INTEGER NOT NULL, 
	path VARCHAR NOT NULL, 
	sha256 VARCHAR NOT NULL, 
	attempt_id INTEGER NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_batch UNIQUE (run_id, step, cache_key, ledger, idx)
);
CREATE TABLE costs (
	id INTEGER NOT NULL, 
	run_id VARCHAR NOT NULL, 
	step VARCHAR, 
	attempt_id INTEGER, 
	kind VARCHAR NOT NULL, 
	amount FLOAT NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "costs" VALUES(1,'toy-v1','make_items',1,'wall_s',1.5,1767225602.0);
CREATE TABLE events (
	id INTEGER NOT NULL, 
	run_id VARCHAR NOT NULL, 
	ts FLOAT NOT NULL, 
	kind VARCHAR NOT NULL, 
	step VARCHAR, 
	gate VARCHAR, 
	attempt_id INTEGER, 
	message VARCHAR NOT NULL, 
	data_json VARCHAR, 
	PRIMARY KEY (id)
);
INSERT INTO "events" VALUES(1,'toy-v1',1767225600.0,'run_created',NULL,NULL,NULL,'v1 event 0',NULL);
INSERT INTO "events" VALUES(2,'toy-v1',1767225601.0,'lease_acquired',NULL,NULL,NULL,'v1 event 1',NULL);
INSERT INTO "events" VALUES(3,'toy-v1',1767225602.0,'attempt_started','make_items',NULL,NULL,'v1 event 2',NULL);
INSERT INTO "events" VALUES(4,'toy-v1',1767225603.0,'attempt_succeeded','make_items',NULL,NULL,'v1 event 3',NULL);
INSERT INTO "events" VALUES(5,'toy-v1',1767225604.0,'gate_requested',NULL,NULL,NULL,'v1 event 4',NULL);
CREATE TABLE gate_decisions (
	id INTEGER NOT NULL, 
	gate_id INTEGER NOT NULL, 
	run_id VARCHAR NOT NULL, 
	source VARCHAR NOT NULL, 
	decision VARCHAR NOT NULL, 
	who VARCHAR NOT NULL, 
	note VARCHAR, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE gates (
	id INTEGER NOT NULL, 
	run_id VARCHAR NOT NULL, 
	name VARCHAR NOT NULL, 
	gate_key VARCHAR NOT NULL, 
	policy VARCHAR NOT NULL, 
	status VARCHAR NOT NULL, 
	check_json VARCHAR, 
	wait_reason VARCHAR NOT NULL, 
	requested_at FLOAT NOT NULL, 
	decided_at FLOAT, 
	decided_by VARCHAR, 
	note VARCHAR, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_gate UNIQUE (run_id, name, gate_key)
);
INSERT INTO "gates" VALUES(1,'toy-v1','approve_items','g1','human','pending',NULL,'a person decides',1767225603.0,NULL,NULL,NULL);
CREATE TABLE leases (
	run_id VARCHAR NOT NULL, 
	owner_id VARCHAR NOT NULL, 
	host VARCHAR NOT NULL, 
	pid INTEGER NOT NULL, 
	pid_start_time FLOAT NOT NULL, 
	generation INTEGER NOT NULL, 
	acquired_at FLOAT NOT NULL, 
	heartbeat_at FLOAT NOT NULL, 
	expires_at FLOAT NOT NULL, 
	released BOOLEAN NOT NULL, 
	PRIMARY KEY (run_id)
);
CREATE TABLE runs (
	id VARCHAR NOT NULL, 
	pipeline VARCHAR NOT NULL, 
	config_path VARCHAR, 
	config_json VARCHAR NOT NULL, 
	plan_json VARCHAR NOT NULL, 
	seed INTEGER NOT NULL, 
	status VARCHAR NOT NULL, 
	status_detail VARCHAR NOT NULL, 
	goal VARCHAR NOT NULL, 
	created_at FLOAT NOT NULL, 
	updated_at FLOAT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "runs" VALUES('toy-v1','runner.examples.toy:pipeline',NULL,'{"seed":7}','[{"description":"Write the items to process.","inputs":[],"kind":"step","name":"make_items","outputs":["items.jsonl"],"version":"1"},{"criteria":[],"description":"","kind":"gate","name":"approve_items","policy":"human"}]',7,'waiting','approve_items','a v1 run',1767225600.0,1767225603.0);
CREATE TABLE schema_migrations (
	version INTEGER NOT NULL, 
	name VARCHAR NOT NULL, 
	applied_at FLOAT NOT NULL, 
	PRIMARY KEY (version)
);
INSERT INTO "schema_migrations" VALUES(1,'initial',1767225600.0);
CREATE INDEX ix_attempt_lookup ON attempts (run_id, step, cache_key);
CREATE INDEX ix_attempts_run_id ON attempts (run_id);
CREATE INDEX ix_artifacts_attempt_id ON artifacts (attempt_id);
CREATE INDEX ix_artifacts_run_id ON artifacts (run_id);
CREATE INDEX ix_gates_run_id ON gates (run_id);
CREATE INDEX ix_gate_decisions_gate_id ON gate_decisions (gate_id);
CREATE INDEX ix_events_run ON events (run_id, id);
CREATE INDEX ix_costs_run_id ON costs (run_id);
COMMIT;
