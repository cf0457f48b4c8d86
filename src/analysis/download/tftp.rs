//! The `tftp` downloader (in progress).
