/*
 * journal.h — the request journal: an append-only log of accepted download and delete requests
 * in DATA_DIR/journal, so that a daemon that crashes or is restarted does not lose requests it
 * has accepted. docs/journal.md draws the file format and argues crash safety; this module is
 * its executable form.
 *
 * The store is log-structured in the manner of Bitcask: records are only ever appended, and an
 * in-memory hash index maps each chunk id to its live record (the last one for that id, unless
 * the caller has forgotten it) by file offset, size, timestamp and type. Superseded and forgotten
 * records are dropped by compaction, which rewrites the live records into a new file and renames
 * it over the old one.
 *
 * Appending does no I/O: records are encoded into an in-memory buffer. The daemon's io_uring
 * loop performs the group commit itself (one write and one fdatasync for everything appended
 * since the last commit) through chunkd__journal_pending(), chunkd__journal_begin_commit() and
 * chunkd__journal_end_commit(); chunkd__journal_sync() does the same synchronously.
 *
 * A journal handle is not thread-safe: one thread uses it at a time (the daemon's loop thread).
 * Functions returning int return 0 (or a documented non-negative value) or a negative errno.
 * Once a write or fsync of the journal has failed, the handle keeps that error ("sticky") and
 * every later append, commit, sync or compaction returns it: after a failed fsync the kernel may
 * have dropped the dirty pages, so a retry could report success for data that is not on disk.
 * The daemon's answer to a sticky error is to exit; the next start replays what is on disk.
 */
#ifndef CHUNKD_DAEMON_JOURNAL_H
#define CHUNKD_DAEMON_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "shm/records.h"

#define CHUNKD_JOURNAL_NAME     "journal"     /* in DATA_DIR */
#define CHUNKD_JOURNAL_TMP_NAME "journal.tmp" /* compaction's new file before its rename */
#define CHUNKD_JOURNAL_VERSION  2u /* 2 adds refused records; version 1 files are read too */

/* Record types, as stored in the record's type byte. */
enum chunkd_jrec_type {
	CHUNKD_JREC_DOWNLOAD = 1,
	CHUNKD_JREC_DELETE = 2,
};

/* Default for chunkd__journal_should_compact(): never compact a file smaller than this. */
#define CHUNKD_JOURNAL_COMPACT_FLOOR (1u << 20)

struct chunkd_journal;

/*
 * A request as the journal stores it. `client`, `owner` and `ticket` say who asked: after a
 * restart the daemon posts the result to that ticket if slot `client` still belongs to `owner`.
 */
struct chunkd_jrec {
	uint32_t type;              /* enum chunkd_jrec_type */
	uint64_t ts_ns;             /* CLOCK_REALTIME of acceptance; 0 on append = "now" */
	uint32_t client;            /* client slot in the request segment */
	uint64_t owner;             /* that slot's owner word when the request was accepted */
	uint64_t ticket;            /* the client's ticket */
	uint64_t id[4];             /* the chunk id */
	const struct chunkd_dl *dl; /* DOWNLOAD only (NULL for DELETE): the descriptor */
	/* 0, or (DOWNLOAD only) the negative errno the daemon refused the request with, -1..-255:
	 * a refused request is journaled so that a restart still answers it (and knows its ticket
	 * was taken), but it is never live: it does not change what its id's live record is. */
	int32_t refused;
};

/* The live record of one chunk id, as the in-memory index holds it. */
struct chunkd_journal_entry {
	uint64_t off;   /* file offset of the record (it may still be pending, not yet on disk) */
	uint32_t size;  /* bytes, a multiple of 8 */
	uint32_t type;  /* enum chunkd_jrec_type */
	uint64_t ts_ns; /* the record's timestamp */
};

/* Why replay stopped before the end of the file (chunkd_journal_stats.cut). */
enum chunkd_journal_cut {
	CHUNKD_JOURNAL_CUT_NONE = 0,
	/* The bad bytes reach the end of the file: an interrupted commit, normal after a crash. */
	CHUNKD_JOURNAL_CUT_TORN = 1,
	/* A bad record followed by other bytes: damage (or a crash that wrote later pages of its
	 * last commit but not earlier ones). Records after it are lost; worth a loud log line. */
	CHUNKD_JOURNAL_CUT_CORRUPT = 2,
};

/*
 * What chunkd__journal_open() found, and the journal's current size (chunkd__journal_stats()).
 * The caller logs a cut as "journal: torn tail, truncated N bytes at offset X" (TORN) or
 * "journal: corrupt record at offset X: replay stops there, truncated N bytes" (CORRUPT).
 */
struct chunkd_journal_stats {
	uint64_t records;      /* valid records replayed by open */
	uint64_t live_records; /* ids in the live index */
	uint64_t live_bytes;   /* bytes of their records (without the file header) */
	uint64_t file_bytes;   /* header + every record, pending ones included */
	uint64_t replay_ns;    /* time open spent reading and replaying (CLOCK_MONOTONIC) */
	uint32_t cut;          /* enum chunkd_journal_cut */
	uint64_t cut_offset;   /* where the file was truncated (valid when cut != NONE) */
	uint64_t cut_bytes;    /* how many bytes were cut */
	int created;           /* 1: open created a new, empty journal */
	int tmp_removed; /* 1: open removed a leftover journal.tmp (an interrupted compaction) */
	int upgraded;    /* 1: open rewrote a version 1 journal as the current version */
	char why[128];   /* on a cut or -EPROTO: what was wrong, NUL-terminated; else "" */
};

/*
 * Replay callback: called by chunkd__journal_open() once per valid record, in file order
 * (superseded records included; after open, chunkd__journal_live() says which are live). `r`
 * and `r->dl` (with dl->ticket = r->ticket) are valid only during the call. Return 0 to go on,
 * or a negative errno to abort the open, which then returns that value.
 */
typedef int (*chunkd_journal_replay_fn)(const struct chunkd_jrec *r, void *arg);

/*
 * chunkd__journal_open — open DATA_DIR/journal, creating it if missing, and replay it.
 * A leftover journal.tmp (an interrupted compaction) is removed first. A missing journal is
 * created durably: written as journal.tmp, fsynced, renamed, directory fsynced, so a crash leaves
 * either no journal or a complete header. Replay reads the file in large blocks (no per-record
 * syscall), checks every record (length, CRC32C, type, padding, and a DOWNLOAD's descriptor by
 * the rules the daemon applies to ring records), calls `replay` for each and builds the live
 * index. At the first bad record it stops, truncates the file there (ftruncate + fsync) and
 * reports the cut in `st`; appends then continue from that point.
 * @dirfd   the data directory, open for reading (it is fsynced). The journal keeps a duplicate
 *          (for compaction); the caller keeps and closes its own.
 * @out     receives the handle; close with chunkd__journal_close().
 * @replay  may be NULL.
 * @st      may be NULL; else filled (also on -EPROTO, whose reason is in st->why).
 * @return  0; -EPROTO the file is not a journal this code can read (bad magic, unsupported
 *          version, bad header CRC, shorter than its header): the file is left untouched;
 *          -ENOMEM; a replay callback's error; other negative errnos from openat/read/ftruncate/
 *          fsync/renameat (e.g. -EISDIR, -ELOOP for a symlink, -EACCES).
 * Blocks: on disk I/O (reads the whole file; fsyncs when it creates or truncates).
 */
int chunkd__journal_open(int dirfd, struct chunkd_journal **out, chunkd_journal_replay_fn replay,
			 void *arg, struct chunkd_journal_stats *st);

/*
 * chunkd__journal_close — free the handle and close the file. Pending bytes are NOT written:
 * call chunkd__journal_sync() first for a clean shutdown (unwritten records were never reported
 * durable, so dropping them is what a crash would do). A commit the loop still has in flight must
 * have completed (its buffer is freed here). NULL is a no-op. Does not block beyond close().
 */
void chunkd__journal_close(struct chunkd_journal *j);

/*
 * chunkd__journal_append — encode `r` at the end of the pending buffer and make it the live
 * record of r->id. No I/O: the record is durable only after a commit that includes it (see
 * chunkd__journal_durable_seq()). The buffer grows as needed; `r` and r->dl are not kept.
 * r->ts_ns 0 is replaced by the current CLOCK_REALTIME. A refused record (r->refused) is
 * appended but does not become live: the id's live record stays what it was.
 * @return  0; -EINVAL bad type, a refused DELETE or a refused value outside -255..-1, DOWNLOAD without dl, dl->id differing from r->id, or a
 *          descriptor replay would refuse (nfiles, range, a bad or duplicate name, a bad URL):
 *          such a record would stop every later replay, so it is refused here; -ENOMEM; the
 *          sticky error. Does not block.
 */
int chunkd__journal_append(struct chunkd_journal *j, const struct chunkd_jrec *r);

/*
 * chunkd__journal_forget — id's record is no longer live (its desired state was "absent" and the
 * chunk is gone): the next compaction drops it and every older record of id. Not durable by
 * itself: a replay before that compaction sees the record again, so the caller treats replayed
 * records idempotently. Unknown ids are ignored. No I/O, does not block.
 */
void chunkd__journal_forget(struct chunkd_journal *j, const uint64_t id[4]);

/*
 * chunkd__journal_live — look up id's live record.
 * @return 0 and *out filled (out may be NULL); -ENOENT none. Does not block.
 */
int chunkd__journal_live(const struct chunkd_journal *j, const uint64_t id[4],
			 struct chunkd_journal_entry *out);

/* ---- group commit ---------------------------------------------------------------------------- */

/*
 * The loop commits like this, with at most one commit in flight:
 *
 *	if (!in_flight && chunkd__journal_pending(j, &buf, &len, &off) == 0 && len) {
 *		chunkd__journal_begin_commit(j);
 *		// io_uring: write(chunkd__journal_fd(j), buf, len, off), linked fdatasync
 *	}
 *	...
 *	// on completion: 0 if all len bytes were written and the fdatasync succeeded
 *	chunkd__journal_end_commit(j, res);
 *	// every record with seq <= chunkd__journal_durable_seq(j) is now durable
 */

/*
 * chunkd__journal_pending — the bytes appended since the last commit began, and the file offset
 * where they go (the end of everything appended before them).
 * @buf     valid until the next append if no commit is in flight; once begin_commit() has
 *          frozen it, valid until the matching end_commit().
 * @return  0 (*len may be 0: nothing to commit); the sticky error. Does not block.
 */
int chunkd__journal_pending(const struct chunkd_journal *j, const void **buf, size_t *len,
			    uint64_t *file_off);

/*
 * chunkd__journal_begin_commit — freeze the pending bytes as the commit in flight; further
 * appends go to a second buffer, placed after them in the file.
 * @return  0; -EBUSY a commit is already in flight; the sticky error. Does not block.
 */
int chunkd__journal_begin_commit(struct chunkd_journal *j);

/*
 * chunkd__journal_end_commit — the loop's write and fdatasync of the frozen bytes completed.
 * @result  0: all of them were written at their offset and fdatasync succeeded; they are durable
 *          and chunkd__journal_durable_seq() advances. A negative errno (or a short write turned
 *          into one by the caller): the error becomes sticky; nothing is retried.
 * Without a commit in flight it does nothing. Does not block.
 */
void chunkd__journal_end_commit(struct chunkd_journal *j, int result);

/*
 * chunkd__journal_sync — write every pending byte (pwrite at its offset) and fdatasync, so
 * every appended record is durable. For tests and for shutdown.
 * @return  0 (also with nothing pending: no I/O then); -EBUSY a commit is in flight (let the
 *          loop finish it); a write or fdatasync error, which becomes sticky.
 * Blocks: on disk I/O.
 */
int chunkd__journal_sync(struct chunkd_journal *j);

/*
 * chunkd__journal_fd — the journal's file descriptor, for the loop's writes. It changes when
 * chunkd__journal_compact() succeeds, so fetch it for each commit. Owned by the journal.
 */
int chunkd__journal_fd(const struct chunkd_journal *j);

/*
 * Sequence numbers of appended records, to tell the daemon which requests are durable:
 * records are numbered 1, 2, ... in append order for the life of the handle (compaction does
 * not renumber them). chunkd__journal_last_seq() is the number of the last append (0 before any);
 * chunkd__journal_durable_seq() is the last one known durable (a successful end_commit, sync or
 * compaction). Records replayed by open are durable and are not numbered.
 */
uint64_t chunkd__journal_last_seq(const struct chunkd_journal *j);
uint64_t chunkd__journal_durable_seq(const struct chunkd_journal *j);

/* ---- compaction ------------------------------------------------------------------------------ */

/*
 * chunkd__journal_should_compact — 1 when the journal (pending bytes included) is larger than
 * twice what compaction would leave and larger than the floor; else 0. Does not block.
 */
int chunkd__journal_should_compact(const struct chunkd_journal *j);

/* chunkd__journal_set_compact_floor — set the floor of should_compact() (default
 * CHUNKD_JOURNAL_COMPACT_FLOOR bytes); tests use a tiny one. */
void chunkd__journal_set_compact_floor(struct chunkd_journal *j, uint64_t bytes);

/*
 * Keep function: 1 if compaction must keep the superseded record `r` (header fields only: r->dl
 * is NULL), because its request is not answered yet and a replay must still find it; 0 to drop
 * it. Called during chunkd__journal_compact() for every record that is not live, in file order.
 */
typedef int (*chunkd_journal_keep_fn)(const struct chunkd_jrec *r, void *arg);

/*
 * chunkd__journal_set_keep — compaction keeps the superseded records `keep` asks for, in their
 * file order, before their id's live record (so replay folds them as it did before). Without
 * one (NULL, the default) compaction keeps only live records. Kept records are not indexed; their
 * bytes count as live for should_compact() until the next compaction, so that a journal holding
 * many of them is not compacted again at every commit.
 */
void chunkd__journal_set_keep(struct chunkd_journal *j, chunkd_journal_keep_fn keep, void *arg);

/*
 * chunkd__journal_compact — rewrite the journal with only its live records (and the superseded
 * ones a keep function asks for: chunkd__journal_set_keep). First every pending
 * byte is made durable (as chunkd__journal_sync()); then the live records are copied in file
 * order (CRC checked again) into journal.tmp, which is fsynced, renamed over journal, and the
 * directory fsynced. Appends then continue at the end of the new file and the live index points
 * into it. At every crash point the file named journal is either the complete old journal or the
 * complete new one, holding the same live records; docs/journal.md gives the argument.
 * @return  0: every appended record is durable (durable_seq == last_seq); -EBUSY a commit is in
 *          flight; -ENOMEM; -EIO the old file no longer matches the index (a record's CRC fails);
 *          errnos of the I/O. An error before the rename leaves the old journal in use and
 *          journal.tmp removed; an error from the final directory fsync is sticky (the rename may
 *          not be durable, so appending to the new file would be unsafe).
 * Blocks: on disk I/O: reads the live records, writes them, two or three fsyncs.
 */
int chunkd__journal_compact(struct chunkd_journal *j);

/* chunkd__journal_stats — current sizes (records, replay and cut fields: as open found them). */
void chunkd__journal_stats(const struct chunkd_journal *j, struct chunkd_journal_stats *st);

/* ---- fault injection (tests) ----------------------------------------------------------------- */

/* Points at which the journal calls its fault hook, just before the named step. */
enum chunkd_journal_fault {
	CHUNKD_JFAULT_SYNC_WRITE = 1,  /* sync: pwrite of the pending bytes */
	CHUNKD_JFAULT_SYNC_FDATASYNC,  /* sync: fdatasync */
	CHUNKD_JFAULT_COMPACT_WRITE,   /* compact: each write into journal.tmp */
	CHUNKD_JFAULT_COMPACT_FSYNC,   /* compact: fsync of journal.tmp */
	CHUNKD_JFAULT_COMPACT_RENAME,  /* compact: rename over journal */
	CHUNKD_JFAULT_COMPACT_DIRSYNC, /* compact: fsync of the directory, after the rename */
};

/*
 * chunkd__journal_set_fault_hook — for tests: `hook` is called at each point above; returning a
 * negative errno makes the step fail with it (as if the syscall had), 0 lets it run. A hook may
 * also _exit() to simulate a crash at that point. NULL removes it. Never set in the daemon.
 */
void chunkd__journal_set_fault_hook(struct chunkd_journal *j, int (*hook)(int point, void *arg),
				    void *arg);

#endif /* CHUNKD_DAEMON_JOURNAL_H */
