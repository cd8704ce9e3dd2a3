// Top-level command and the exit codes every subcommand shares.
import ArgumentParser
import StrataChain

struct StrataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata",
        abstract: "Block-level, change-tracking, incremental disk imager.",
        discussion: """
            The first capture of a disk into a chain directory writes a full image; every later capture writes an \
            incremental image holding only the blocks whose content changed. Any point of the chain restores, \
            bit for bit, in one pass.

              strata capture /dev/sdb /backup/sdb
              strata list /backup/sdb
              strata restore /backup/sdb /dev/sdc --point 2
              strata verify /backup/sdb
              strata mount /backup/sdb /mnt/sdb --point 2 --files
              strata prune /backup/sdb --keep-daily 7 --keep-weekly 4 --keep-monthly 12

            CHAINS IN OBJECT STORAGE
              A chain named s3://BUCKET/PREFIX lives in an S3-compatible store, for
              every command. Credentials and endpoint as the AWS tools find them:
              AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
              AWS_ENDPOINT_URL(_S3), AWS_PROFILE, ~/.aws/credentials, ~/.aws/config.
              strata sync SRC DST copies a chain between any two places (directories,
              buckets), only what DST lacks.

            EXIT STATUS
              0   success
              64  bad usage: an invalid option, or a point that does not exist;
                  unmount of a directory strata did not mount
              65  the chain is damaged, foreign, or does not match the source
                  (nothing was changed); verify found damage; mount --files on a
                  point holding no filesystem it can mount
              66  the source cannot be opened (an NBD server unreachable or broken)
              67  an encrypted chain and no key given, a key or passphrase that
                  does not open it (or is another chain's), a key file that
                  cannot be read or that keygen would overwrite (nothing was done)
              69  the requested I/O engine is unavailable; no FUSE or no loop
                  devices for mount; capture --freeze or --snapshot cannot be
                  done on that filesystem (nothing was read); capture
                  --require-change-source where nothing can say what changed
                  (nothing was written); an object store that cannot be reached
                  (after retries; the chain unchanged)
              70  an internal error (a bug in strata; the message says what failed)
              73  the target cannot be written, or is too small; a mount directory
                  that is missing, not an empty directory, or already a mount
                  point; a serve socket in use; a --metrics-file that cannot be
                  written
              74  an I/O error: a read error on the source (see capture
                  --max-bad-blocks), a target that does not read back as written
                  (restore --verify), a failed write (a full disk)
              75  the chain is being changed by another strata process (a capture,
                  merge or prune; restores, verifies, lists, mounts and serves run
                  beside them); unmount of a directory still in use
              77  refused for safety: a source mounted read-write (see capture
                  --allow-mounted), a source or target that is part of the chain,
                  a target in use, an existing target file (see restore --force);
                  an object store that refuses (credentials, permissions, a
                  bucket that does not exist, no conditional writes: see
                  --allow-unconditional-writes); sync into a place that holds
                  another chain or points the source has not seen
            """,
        version: StrataVersion.line,
        subcommands: [CaptureCommand.self, RestoreCommand.self, ListCommand.self, MergeCommand.self, PruneCommand.self, VerifyCommand.self, RepairCommand.self, ServeCommand.self, MountCommand.self, UnmountCommand.self, KeygenCommand.self, KeyCommand.self, SyncCommand.self, BenchCommand.self, FreezeGuardianCommand.self])
}
