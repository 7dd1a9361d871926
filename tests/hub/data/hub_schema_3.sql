-- A hub database as the SQLite store wrote it before its migrations were numbered
-- (schema_version 3): its schema exactly as sqlite_master held it, and a few rows.
BEGIN;
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE orgs (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    is_admin INTEGER NOT NULL DEFAULT 0,
    verified INTEGER NOT NULL DEFAULT 0,
    verification_code TEXT NOT NULL,
    created_at REAL NOT NULL,
    email TEXT NOT NULL DEFAULT '',
    verified_at REAL
);
CREATE TABLE memories (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key_name TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    description TEXT NOT NULL,
    value TEXT NOT NULL,
    is_base64 INTEGER NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE results (
    key_name TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    agent TEXT NOT NULL,
    verified INTEGER NOT NULL,
    result_id TEXT NOT NULL,
    track TEXT NOT NULL,
    train_py_sha256 TEXT NOT NULL,
    seed INTEGER,
    status TEXT NOT NULL,
    provisional INTEGER NOT NULL,
    val_bpb REAL,
    created_at REAL NOT NULL
, tier TEXT NOT NULL DEFAULT '', proposer TEXT NOT NULL DEFAULT '', description TEXT NOT NULL DEFAULT '', duration_s REAL NOT NULL DEFAULT 0, parent_sha256 TEXT NOT NULL DEFAULT '', first_agent TEXT NOT NULL DEFAULT '');
CREATE INDEX results_by_sha ON results (org, train_py_sha256);
CREATE VIRTUAL TABLE memories_fts USING fts5(key_name, description, body);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    agent TEXT NOT NULL,
    action TEXT NOT NULL,
    key_name TEXT NOT NULL,
    version INTEGER,
    detail TEXT NOT NULL
);
CREATE INDEX audit_by_key ON audit (key_name, seq);
CREATE TABLE auth_epoch (n INTEGER NOT NULL);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE INDEX results_by_time ON results (org, created_at, key_name);
CREATE INDEX results_by_agent ON results (org, agent, created_at, key_name);
CREATE INDEX results_by_status ON results (org, status, created_at, key_name);
CREATE INDEX results_by_tier ON results (org, tier, created_at, key_name);
CREATE INDEX results_by_proposer ON results (org, proposer, created_at, key_name);
CREATE INDEX results_by_track ON results (org, track, created_at, key_name);
CREATE INDEX results_by_track_tier ON results
    (org, track, tier, created_at, key_name);
CREATE TABLE standings (
    org TEXT NOT NULL,
    agent TEXT NOT NULL,
    runs BIGINT NOT NULL,
    keeps BIGINT NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    confirmations BIGINT NOT NULL,
    PRIMARY KEY (org, agent)
);
CREATE INDEX results_by_id ON results (org, result_id)
;
INSERT INTO "agents" VALUES('alice','hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh',0,1,'cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc',2.0,'a@example.org',2.0);
INSERT INTO "agents" VALUES('bob','kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk',0,0,'dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd',3.0,'',NULL);
INSERT INTO "audit" VALUES(1,1.0,'admin','create_org','@o',NULL,'');
INSERT INTO "audit" VALUES(2,2.0,'alice','register','',NULL,'');
INSERT INTO "audit" VALUES(3,3.0,'bob','register','',NULL,'');
INSERT INTO "audit" VALUES(4,4.0,'alice','create','@o/results/alice/r1',1,'');
INSERT INTO "audit" VALUES(5,5.0,'alice','create','@o/insights/alice/warmup',1,'');
INSERT INTO "auth_epoch" VALUES(0);
INSERT INTO "memories" VALUES(1,'@o/results/alice/r1','alice','a result','{"id": "r1", "val_bpb": 1.25}',0,1,4.0,4.0,1);
INSERT INTO "memories" VALUES(2,'@o/insights/alice/warmup','alice','a note','warmup helps rope',0,1,5.0,5.0,1);
INSERT INTO "orgs" VALUES('o',1.0);
INSERT INTO "results" VALUES('@o/results/alice/r1','o','alice',1,'r1','synthetic','ssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssss',7,'keep',0,1.25,4.0,'xl','perturb','LR 0.1 -> 0.2',30.0,'','alice');
INSERT INTO "schema_version" VALUES(3);
INSERT INTO "standings" VALUES('o','alice',1,1,30.0,0);
INSERT INTO memories_fts (rowid, key_name, description, body) VALUES (1, '@o/results/alice/r1', 'a result', '{"id": "r1", "val_bpb": 1.25}');
INSERT INTO memories_fts (rowid, key_name, description, body) VALUES (2, '@o/insights/alice/warmup', 'a note', 'warmup helps rope');
COMMIT;
