import CBuildStamp

/// What the running executable was built from: the commit and its date that Tools/stamp-commit wrote into the
/// binary (Tools/build-release stamps every release build), or nil in a binary built without it (`swift build`).
public enum BuildStamp {
    /// "96ea8bf1c0de 2026-12-07", with "-dirty" after the commit where the tree had uncommitted changes.
    public static let commit: String? = {
        let marker = 20  // "STRATA-COMMIT-STAMP:"; the words are not repeated here, so the binary holds them once
        let stamp = String(cString: strata_build_stamp() + marker)
        return stamp.isEmpty ? nil : stamp
    }()
}
