fn main() -> std::process::ExitCode {
    llm_cxr::main()
}
