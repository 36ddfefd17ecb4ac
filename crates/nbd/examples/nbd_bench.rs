//! Throughput helper for `bench/nbd.sh`.
//!
//! - `nbd_bench read <socket> <export> <out.raw> [chunk-KiB] [depth]`: copy an NBD export
//!   into a sparse local raw file with the pipelined client; prints MiB/s.
//! - `nbd_bench serve <socket> <export> <out.raw> <size>`: serve a [`FileExport`] until the
//!   first client disconnects; prints what it received.

use std::os::unix::fs::FileExt;
use std::time::Instant;

use vmdump_nbd::export::FileExport;
use vmdump_nbd::{Client, ClientOptions, Server, ServerOptions};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("read") if args.len() >= 5 => {
            let chunk: u32 = args.get(5).map_or(Ok(1024), |s| s.parse())? * 1024;
            let depth: usize = args.get(6).map_or(Ok(8), |s| s.parse())?;
            let client =
                Client::connect_unix(&args[2], &args[3], &ClientOptions::default()).await?;
            let out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&args[4])?;
            let regular = out.metadata()?.is_file();
            if regular {
                out.set_len(client.size())?;
            }
            let start = Instant::now();
            // Writes run on their own thread (like qemu-img's I/O thread pool), so the
            // runtime keeps receiving while the page cache absorbs the data.
            let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, bytes::Bytes)>(depth);
            let writer = std::thread::spawn(move || -> std::io::Result<()> {
                for (off, data) in rx {
                    if regular && !data.iter().all(|b| *b == 0) {
                        out.write_all_at(&data, off)?;
                    }
                }
                if regular {
                    out.sync_data()?;
                }
                Ok(())
            });
            let mut stream = client.read_range(0..client.size(), chunk, depth);
            while let Some(r) = stream.next().await {
                let item = r?;
                let tx = tx.clone();
                tokio::task::block_in_place(|| tx.send(item)).map_err(|_| "writer thread died")?;
            }
            drop(tx);
            writer.join().map_err(|_| "writer thread panicked")??;
            let secs = start.elapsed().as_secs_f64();
            println!(
                "read {} MiB in {secs:.2} s: {:.0} MiB/s",
                client.size() >> 20,
                client.size() as f64 / (1 << 20) as f64 / secs
            );
            client.disconnect().await?;
        }
        Some("serve") if args.len() >= 6 => {
            let size: u64 = args[5].parse()?;
            let export = FileExport::create(args[4].as_ref(), size)?;
            let mut server = Server::new(ServerOptions::default());
            server.add_export(args[3].clone(), export);
            let mut handle = server.serve_unix(&args[2]).await?;
            let done = handle
                .wait_disconnect(&args[3])
                .await
                .ok_or("server stopped")?;
            println!("{done:?}");
            handle.shutdown().await;
        }
        _ => {
            eprintln!("usage: nbd_bench read <sock> <export> <out> [chunk-KiB] [depth] | serve <sock> <export> <out> <size>");
            std::process::exit(2);
        }
    }
    Ok(())
}
