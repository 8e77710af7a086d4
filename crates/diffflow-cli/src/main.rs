fn main() {
    diffflow::hello();
}
