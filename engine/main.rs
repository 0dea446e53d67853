//! `ferrited`: the Ferrite node daemon.

fn main() {
    println!("ferrited: nothing yet");
}
