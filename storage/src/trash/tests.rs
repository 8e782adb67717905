use std::future::Future;

use glommio::{LocalExecutorBuilder, Placement};

use super::*;

fn run<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("glommio executor")
        .run(test());
}

fn write(path: &Path, bytes: usize) {
    std::fs::write(path, vec![7u8; bytes]).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_discarded_file_leaves_its_name_at_once_and_its_blocks_later() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000000.log");
        write(&path, 3 * CUT_BYTES as usize + 100);
        let trash = Trash::new(0, u64::MAX);
        trash.discard(&path, Vec::new()).await.unwrap();
        assert!(!path.exists());
        let left = names(dir.path());
        assert!(
            left.is_empty() || (left.len() == 1 && Trash::is_trash_name(&left[0])),
            "{left:?}"
        );
        trash.drained().await;
        assert!(names(dir.path()).is_empty());
        assert_eq!(trash.freed_bytes(), 3 * CUT_BYTES + 100);
        assert_eq!(trash.backlog_bytes(), 0);
        // Gone already (a crash retried the removal): nothing to do, no error.
        trash.discard(&path, Vec::new()).await.unwrap();
    });
}

#[test]
fn a_file_a_reader_holds_is_cut_only_after_the_reader_lets_go() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000000.log");
        write(&path, 8192);
        let held = Rc::new(io::open_segment(&path).await.unwrap());
        let trash = Trash::new(0, u64::MAX);
        trash
            .discard(&path, vec![Rc::downgrade(&held)])
            .await
            .unwrap();
        glommio::timer::sleep(HELD_RECHECK * 3).await;
        let trashed = names(dir.path());
        assert_eq!(trashed.len(), 1, "{trashed:?}");
        let bytes = io::read_at(&held, &path, 0, 8192).await.unwrap();
        assert_eq!(bytes.len(), 8192, "the reader still reads every byte");
        assert_eq!(trash.freed_bytes(), 0);
        drop(held);
        trash.drained().await;
        assert!(names(dir.path()).is_empty());
        assert_eq!(trash.freed_bytes(), 8192);
    });
}

#[test]
fn a_slow_rate_gives_way_once_the_backlog_passes_its_bound() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        // One byte a second would take weeks; a backlog over the bound frees at once.
        let trash = Trash::new(1, 1024);
        for n in 0..4 {
            let path = dir.path().join(format!("{n:020}.log"));
            write(&path, 64 << 10);
            trash.discard(&path, Vec::new()).await.unwrap();
        }
        let drained = glommio::timer::timeout(Duration::from_secs(60), async {
            trash.drained().await;
            Ok(())
        })
        .await;
        assert!(drained.is_ok(), "the trash kept a backlog over its bound");
        assert!(names(dir.path()).is_empty());
    });
}

#[test]
fn a_directory_goes_with_its_files() {
    run(|| async {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("events-0.1.deleted");
        std::fs::create_dir(&dir).unwrap();
        for n in 0..3 {
            write(&dir.join(format!("{n:020}.log")), 10_000);
        }
        let trash = Trash::new(0, u64::MAX);
        trash.adopt_dir(dir.clone());
        trash.drained().await;
        assert!(!dir.exists());
        assert_eq!(trash.freed_bytes(), 30_000);
    });
}

#[test]
fn trash_names_are_told_apart() {
    assert!(Trash::is_trash_name("00000000000000000000.log.17.deleted"));
    assert!(!Trash::is_trash_name("00000000000000000000.log"));
    assert!(!Trash::is_trash_name("deleted"));
    assert!(!Trash::is_trash_name("xdeleted"));
}

#[test]
fn the_pace_spaces_bytes_at_the_rate() {
    run(|| async {
        let mut pace = Pace::new(1 << 20);
        let started = Instant::now();
        pace.wait(1 << 20).await;
        // The first cut goes at once; the next waits for the rate.
        assert!(pace.next >= started + Duration::from_millis(999));
    });
}
