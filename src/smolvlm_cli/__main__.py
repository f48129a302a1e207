from smolvlm_cli.cli.main import main

main()
