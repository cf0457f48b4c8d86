//! The `ftp` downloader (in progress).
